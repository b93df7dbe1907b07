"""Typed domain exceptions; ``fedprompt.rpc`` maps each to one gRPC status code, in one table."""

from __future__ import annotations


class FedPromptError(Exception):
    """Base of every error the platform raises on purpose."""


class ConfigError(FedPromptError):
    """A configuration value is missing, unknown or out of range; the message names the key."""


class InvalidUpdate(FedPromptError):
    """A payload is malformed: wrong size or shape, non-finite values, bad digest, bad chunking."""


class PayloadTooLarge(FedPromptError):
    """A message or upload exceeds the size limit for this job."""


class PreconditionFailed(FedPromptError):
    """The call does not fit the current state of the job or round (base of the two below)."""


class StaleRound(PreconditionFailed):
    """A message names a round (or job stage) that is not the current one."""


class PermissionDenied(FedPromptError):
    """The caller is authenticated but may not do this (base of the refusals below)."""


class NotSelected(PermissionDenied):
    """The caller is not among the participants selected for this round."""


class DuplicateUpdate(FedPromptError):
    """The caller already submitted an update for this round."""


class NotFound(FedPromptError):
    """An unknown job, round version or participant."""


class NotEnrolled(PermissionDenied):
    """The caller has not joined the job, or may not join it."""


class JobStateError(PreconditionFailed):
    """The requested job transition is not allowed from the job's current state."""


class Unauthenticated(FedPromptError):
    """The caller's identity could not be established."""


class InvalidQuery(FedPromptError):
    """A model-service query is malformed: wrong prompt shape, non-finite values, unknown labels, empty texts."""


class QueryTooLarge(PayloadTooLarge):
    """A model-service query exceeds the service's limits (batch size, prompt tokens, text length)."""
