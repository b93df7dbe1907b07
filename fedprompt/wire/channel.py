"""gRPC transport security in one place: client channels (mTLS with this party's certificate by default,
plaintext only on request) and the server credentials of the coordinator and the model service, which both
demand a client certificate signed by the federation CA."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from fedprompt.crypto.errors import PkiError
from fedprompt.crypto.pki import cert_from_pem, cert_info, key_from_pem, load_cert
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


def _pem(path: str, what: str, kind: str) -> bytes:
    """The PEM bytes of a certificate (``kind`` "cert") or private key ("key") file, checked here: gRPC given
    anything else fails later and obscurely (a bind error, a handshake that never starts)."""
    try:
        data = Path(path).read_bytes()
        check = cert_from_pem if kind == "cert" else key_from_pem
        check(data, path)
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror}") from exc
    except PkiError as exc:
        raise ConfigError(f"{what}: {exc}") from exc
    return data


def server_credentials(prefix: str, ca_cert: str, cert: str, key: str) -> grpc.ServerCredentials:
    """mTLS server credentials: this server's certificate and key; callers must present a certificate signed
    by ``ca_cert``.  A file that is unreadable or not PEM is a ``ConfigError`` naming the ``prefix.key`` setting."""
    return grpc.ssl_server_credentials([(_pem(key, f"{prefix}.key", "key"), _pem(cert, f"{prefix}.cert", "cert"))],
                                       root_certificates=_pem(ca_cert, f"{prefix}.ca_cert", "cert"),
                                       require_client_auth=True)


def open_channel(target: str, tls: ClientTls | None, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A blocking channel; ``tls=None`` is plaintext and only reaches a coordinator run with ``--insecure``."""
    if tls is None:
        return grpc.insecure_channel(target, options=list(options))
    credentials = grpc.ssl_channel_credentials(root_certificates=_pem(tls.ca_cert, "CA certificate", "cert"),
                                               private_key=_pem(tls.key, "private key", "key"),
                                               certificate_chain=_pem(tls.cert, "certificate", "cert"))
    extra = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
    return grpc.secure_channel(target, credentials, options=[*options, *extra])
