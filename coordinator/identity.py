"""Who is calling: identity always comes from the transport, never from a request field.

``CertificateAuthenticator`` (the default) names the caller by the common name of the client certificate
that the TLS handshake verified against the federation CA (``participant:hospital-a``, ``admin:alice``),
checks its role for the service called, refuses expired and revoked certificates on every call (the CRL is
re-read when its file changes), and reports each newly revoked serial, with the identity it was seen under, so
the revocation is audited and that identity's in-flight work is dropped.
Only ``participant:`` and ``admin:`` certificates pass a role check; a ``probe:`` certificate (health checks)
reaches the gRPC health service, which needs no role, and is refused everything else.
``InsecureAuthenticator`` (``--insecure``, local development only) trusts the ``x-fedprompt-identity``
metadata header.  ``Gate`` puts the per-identity call limits behind either.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

import grpc
import structlog
from cryptography import x509

from fedprompt.config import IDENTITY
from fedprompt.coordinator.limits import CallLimiter
from fedprompt.crypto.errors import PkiError
from fedprompt.crypto.pki import CertInfo, RevocationList, cert_from_pem, cert_info
from fedprompt.errors import CertificateRevoked, PermissionDenied, Unauthenticated, quoted

log = structlog.get_logger("coordinator.identity")

IDENTITY_HEADER = "x-fedprompt-identity"
PEM_KEY = "x509_pem_cert"


def check_identity(value: str) -> str:
    """An identity is 1-128 characters of letters, digits and ``._:@-``; anything else is refused."""
    if not IDENTITY.match(value):
        raise Unauthenticated(f"identity {quoted(value)} is not a valid participant name")
    return value


class Authenticator(Protocol):
    def participant(self, context: grpc.aio.ServicerContext) -> str:
        """The verified participant identity of the caller, or ``Unauthenticated`` / ``PermissionDenied``."""

    def admin(self, context: grpc.aio.ServicerContext) -> str:
        """The verified admin identity of the caller, or ``Unauthenticated`` / ``PermissionDenied``."""

    def refresh(self) -> None:
        """Pick up revocations (called on every tick as well as on every call)."""

    def crl(self) -> bytes:
        """The federation CRL as signed by the CA (PEM), relayed to members checking key attestations; b"" if none."""


class InsecureAuthenticator:
    """Trusts the identity header: for loopback development and tests without certificates."""

    def participant(self, context: grpc.aio.ServicerContext) -> str:
        structlog.contextvars.bind_contextvars(peer=context.peer())
        values = [v for k, v in (context.invocation_metadata() or ()) if k == IDENTITY_HEADER]
        if not values:
            raise Unauthenticated(f"no {IDENTITY_HEADER} metadata (insecure mode names callers by it)")
        identity = check_identity(str(values[0]))
        structlog.contextvars.bind_contextvars(identity=identity)
        return identity

    def admin(self, context: grpc.aio.ServicerContext) -> str:
        structlog.contextvars.bind_contextvars(identity="admin:insecure")
        return "admin:insecure"

    def refresh(self) -> None:
        return None

    def crl(self) -> bytes:
        return b""


class CertificateAuthenticator:
    """Identity and role from the verified client certificate; revocation from the federation CRL."""

    def __init__(self, ca_cert: x509.Certificate, crl_path: Path, on_revoked: Callable[[int, str | None], None],
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.revocations = RevocationList(crl_path, ca_cert)
        self.on_revoked = on_revoked
        self.clock = clock
        self._parsed: dict[bytes, CertInfo] = {}
        self._seen: dict[int, str] = {}
        self._broken = False

    def refresh(self) -> None:
        try:
            added = self.revocations.refresh()
        except PkiError as exc:
            if not self._broken:
                log.error("revocation list unusable: refusing every call until it is fixed", reason=str(exc))
            self._broken = True
            raise Unauthenticated("the coordinator cannot read its revocation list; calls are refused") from exc
        if self._broken:
            log.info("revocation list usable again", revoked=len(self.revocations.serials))
        self._broken = False
        for serial in sorted(added):
            identity = self._seen.get(serial)
            log.warning("certificate revoked", serial=f"{serial:x}", identity=identity or "never seen")
            self.on_revoked(serial, identity)

    def crl(self) -> bytes:
        return self.revocations.pem

    def _peer(self, context: grpc.aio.ServicerContext) -> CertInfo:
        self.refresh()  # first, so that revocations it reports are not logged under this caller's name
        structlog.contextvars.bind_contextvars(peer=context.peer())
        pems = (context.auth_context() or {}).get(PEM_KEY) or []
        if not pems:
            raise Unauthenticated("no verified client certificate")
        pem = bytes(pems[0])
        info = self._parsed.get(pem)
        if info is None:
            try:
                info = cert_info(cert_from_pem(pem))
            except PkiError as exc:
                raise Unauthenticated(f"client certificate does not name a federation identity: {exc}") from exc
            if len(self._parsed) >= 10_000:
                self._parsed.clear()
            self._parsed[pem] = info
        structlog.contextvars.bind_contextvars(identity=str(info.identity), serial=f"{info.serial:x}")
        if self.revocations.is_revoked(info.serial):
            raise CertificateRevoked(f"certificate {info.serial:x} of {info.identity} is revoked")
        if info.not_after < self.clock():
            raise Unauthenticated(f"certificate of {info.identity} expired at {info.not_after.isoformat()}")
        self._seen[info.serial] = str(info.identity)
        return info

    def _role(self, context: grpc.aio.ServicerContext, role: str) -> str:
        info = self._peer(context)
        if info.identity.role != role:
            raise PermissionDenied(f"{info.identity} has the {info.identity.role} role; this call needs the {role} role")
        return str(info.identity)

    def participant(self, context: grpc.aio.ServicerContext) -> str:
        return self._role(context, "participant")

    def admin(self, context: grpc.aio.ServicerContext) -> str:
        return self._role(context, "admin")


class Gate:
    """Every RPC passes here first: who is calling (the authenticator) and whether it may call this much."""

    def __init__(self, auth: Authenticator, limiter: CallLimiter) -> None:
        self.auth = auth
        self.limiter = limiter

    def participant(self, context: grpc.aio.ServicerContext) -> str:
        identity = self.auth.participant(context)
        self.limiter.take(identity)
        return identity

    def admin(self, context: grpc.aio.ServicerContext) -> str:
        identity = self.auth.admin(context)
        self.limiter.take(identity)
        return identity

    def recheck(self, context: grpc.aio.ServicerContext) -> str:
        """Authenticate again without spending a call (before accepting a long upload's result)."""
        return self.auth.participant(context)

    def crl(self) -> bytes:
        return self.auth.crl()

    def upload(self, identity: str) -> AbstractContextManager[None]:
        return self.limiter.upload(identity)


