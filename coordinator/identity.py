"""Who is calling: identity always comes from the transport, never from a request field.

``InsecureAuthenticator`` (local development only) takes the identity from the ``x-fedprompt-identity``
metadata header; certificate-based authentication plugs in behind the same interface.
"""

from __future__ import annotations

import re
from typing import Protocol

import grpc
import structlog

from fedprompt.errors import Unauthenticated

IDENTITY_HEADER = "x-fedprompt-identity"
_VALID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")


def check_identity(value: str) -> str:
    """An identity is 1-128 characters of letters, digits and ``._:@-``; anything else is refused."""
    if not _VALID.match(value):
        raise Unauthenticated(f"identity {value[:40]!r} is not a valid participant name")
    return value


class Authenticator(Protocol):
    def participant(self, context: grpc.aio.ServicerContext) -> str:
        """The verified participant identity of the caller, or ``Unauthenticated``."""

    def admin(self, context: grpc.aio.ServicerContext) -> str:
        """The verified admin identity of the caller, or ``Unauthenticated`` / ``PermissionDenied``."""


class InsecureAuthenticator:
    """Trusts the identity header: for loopback development and tests without certificates."""

    def participant(self, context: grpc.aio.ServicerContext) -> str:
        values = [v for k, v in (context.invocation_metadata() or ()) if k == IDENTITY_HEADER]
        if not values:
            raise Unauthenticated(f"no {IDENTITY_HEADER} metadata (insecure mode names callers by it)")
        identity = check_identity(str(values[0]))
        structlog.contextvars.bind_contextvars(identity=identity)
        return identity

    def admin(self, context: grpc.aio.ServicerContext) -> str:
        return "admin:insecure"
