"""A Prometheus registry served over plain HTTP (``/metrics``) from a thread: the one endpoint behind the
coordinator's and a participant daemon's ``metrics_listen``, stopped with its process."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from fedprompt.errors import ConfigError


class MetricsEndpoint:
    """Serves one registry; ``serve`` returns the bound port, ``close`` stops it (a no-op when not serving)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def serve(self, address: str, key: str) -> int:
        """Serve on ``address`` (host:port; port 0 picks one); a failure to bind names the config ``key``."""
        host, _, port = address.rpartition(":")
        try:
            self._server, self._thread = start_http_server(int(port), host.strip("[]"), registry=self.registry)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{key}: cannot serve metrics on {address}: {exc}") from exc
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
