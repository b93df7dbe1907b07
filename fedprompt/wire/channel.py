"""gRPC transport security in one place: client channels (mTLS with this party's certificate by default,
plaintext only on request) and the server credentials of the coordinator and the model service, which both
demand a client certificate signed by the federation CA."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from fedprompt.crypto.pki import cert_info, load_cert
from fedprompt.errors import ConfigError


@dataclass(frozen=True)
class ClientTls:
    """This party's certificate and key, and the federation CA that must have signed the coordinator's."""

    ca_cert: str
    cert: str
    key: str
    # Verify the coordinator's certificate against this name instead of the host in the target address.
    server_name: str = ""

    def identity(self) -> str:
        """The ``role:name`` this certificate authenticates as."""
        return str(cert_info(load_cert(Path(self.cert))).identity)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc


def server_credentials(prefix: str, ca_cert: str, cert: str, key: str) -> grpc.ServerCredentials:
    """mTLS server credentials: this server's certificate and key; callers must present a certificate signed
    by ``ca_cert``.  An unreadable file is a ``ConfigError`` naming the ``prefix.key`` setting."""
    def read(path: str, name: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"{prefix}.{name}: cannot read {path}: {exc.strerror}") from exc

    return grpc.ssl_server_credentials([(read(key, "key"), read(cert, "cert"))],
                                       root_certificates=read(ca_cert, "ca_cert"), require_client_auth=True)


def open_channel(target: str, tls: ClientTls | None, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A blocking channel; ``tls=None`` is plaintext and only reaches a coordinator run with ``--insecure``."""
    if tls is None:
        return grpc.insecure_channel(target, options=list(options))
    credentials = grpc.ssl_channel_credentials(root_certificates=_read(tls.ca_cert, "CA certificate"),
                                               private_key=_read(tls.key, "private key"),
                                               certificate_chain=_read(tls.cert, "certificate"))
    extra = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
    return grpc.secure_channel(target, credentials, options=[*options, *extra])
