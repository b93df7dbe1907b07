"""Typed domain exceptions; ``fedprompt.wire.rpc`` maps each to one gRPC status code, in one table.

The crypto layer below has its own (``fedprompt.crypto.errors``); ``ERRORS`` names both families for the
places that refuse any deliberate error alike (servicers, the CLI, a daemon's loops).

A caller's value goes into an error message only through ``quoted`` (its first characters, and its length),
and ``clip`` bounds a whole message by bytes: a status message and a log line must stay small whatever a
caller sends (gRPC drops a call whose status metadata exceeds its hard limit, and a log line is not storage).
"""

from __future__ import annotations

from fedprompt.crypto.errors import CryptoError


class FedPromptError(Exception):
    """Base of every error the platform raises on purpose."""


class ConfigError(FedPromptError):
    """A configuration value is missing, unknown or out of range; the message names the key."""


class FileError(ConfigError):
    """A file a command was given is missing, unreadable, not UTF-8 text or not in its format, or an output
    path cannot be written; the message names the file (``fedprompt.files`` raises it)."""


class SchemaTooNew(ConfigError):
    """The coordinator's store was written by a newer release (its schema version is above the code's); the
    message names the file and both versions, so the operator runs that release or restores a backup."""


class InvalidRequest(FedPromptError):
    """A request field is malformed or out of range (base of ``InvalidUpdate``)."""


class InvalidUpdate(InvalidRequest):
    """A payload is malformed: wrong size or shape, non-finite values, bad digest, bad chunking."""


class ResourceExhausted(FedPromptError):
    """A size, rate or concurrency limit was hit (base of the two below)."""


class PayloadTooLarge(ResourceExhausted):
    """A message or upload exceeds the size limit for this job."""


class RateLimited(ResourceExhausted):
    """The caller exceeded its call rate or its concurrent uploads, or the coordinator its uploads in all; it may
    retry after ``retry_after_s`` (sent with the status, so a client tells it from a deterministic refusal such
    as ``PayloadTooLarge``, which shares its status code)."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PreconditionFailed(FedPromptError):
    """The call does not fit the current state of the job or round (base of the three below)."""


class StaleRound(PreconditionFailed):
    """A message names a round (or job stage) that is not the current one."""


class RobustAssumptionError(PreconditionFailed):
    """A robust aggregator's assumption does not hold (e.g. Krum with n <= 2f + 2); it refuses to run."""


class DecryptorDisagreement(PreconditionFailed):
    """Two key holders decrypted the same encrypted Gram matrix to different scalars: one of them lies or is
    broken, so the round's robust decision is refused rather than made on either answer."""


class AmbiguousName(PreconditionFailed):
    """A job name that several jobs share, where one job must be meant: the caller names it by id (the message
    lists the candidates)."""


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


class NotActive(FedPromptError):
    """This coordinator replica does not hold the lease (it stands by, or was deposed): the caller should try
    another coordinator address (UNAVAILABLE, which a participant's link retries at its next address)."""


class Deposed(NotActive):
    """This coordinator replica's lease was taken over by another (its fencing token is no longer current): it
    must not write, and stops (``coordinator.lease``); a call that reaches it meanwhile is refused UNAVAILABLE."""


class JobStateError(PreconditionFailed):
    """The requested job transition is not allowed from the job's current state."""


class Unauthenticated(FedPromptError):
    """The caller's identity could not be established."""


class CertificateRevoked(Unauthenticated):
    """The caller's certificate is on the federation's revocation list."""


class RelayRefused(FedPromptError):
    """A member refuses to act on what the coordinator relayed: a decryption request whose uploader set is smaller
    than the job's minimum or names a non-member, a Gram round's accepted set outside its attested uploads, or a job
    config its admin did not sign.  The member reports it
    (``ReportKeyFault``), so the job pauses with the reason, and does nothing with it."""


class InvalidQuery(InvalidRequest):
    """A model-service query is malformed: wrong prompt shape, non-finite values, unknown labels, empty texts."""


class QueryTooLarge(PayloadTooLarge):
    """A model-service query exceeds the service's limits (batch size, prompt tokens, text length)."""


#: How many characters of a caller's value ``quoted`` shows.
QUOTE_CHARS = 64


def quoted(value: str, limit: int = QUOTE_CHARS) -> str:
    """``value`` as an error message or log line quotes it: its ``repr``, cut after ``limit`` characters with its
    length said.  Every caller-controlled string quoted in a status or a log goes through here, so a 1 MB id
    costs the message about 70 characters, not a megabyte."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (and never inside a character), saying how long it was.

    The last bound on a message: ``wire.rpc.reject`` clips every status message and logged reason, so a message
    that quotes something unbounded (now or in a future change) still fits gRPC's metadata limit."""
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return text
    marker = f"... [cut: {len(data)} bytes]"
    if len(marker) >= limit:
        return data[: max(0, limit)].decode("utf-8", "ignore")
    return data[: limit - len(marker)].decode("utf-8", "ignore") + marker


#: Every error raised on purpose, by this layer or the crypto layer: what a boundary refuses with a status or
#: a one-line message instead of a traceback.
ERRORS: tuple[type[Exception], ...] = (FedPromptError, CryptoError)
