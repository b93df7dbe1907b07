"""Wires the query-only model service: a thin gRPC servicer over ``ModelHost`` and its server."""

from __future__ import annotations

from typing import Any

import grpc
import structlog

from fedprompt import serde
from fedprompt.channel import server_credentials
from fedprompt.config import ModelServiceSection
from fedprompt.errors import ConfigError
from fedprompt.rpc import rpc_method
from fedprompt.v1 import model_service_pb2, model_service_pb2_grpc
from participant.model_service import ModelHost

log = structlog.get_logger("participant.model_server")


class ModelServiceServicer(model_service_pb2_grpc.ModelServiceServicer):
    """Decode, call the host, encode; the host's typed errors become status codes in ``rpc_method``."""

    def __init__(self, host: ModelHost) -> None:
        self.host = host

    @rpc_method("ModelService")
    async def DescribeModel(self, request: model_service_pb2.DescribeModelRequest,
                            context: grpc.aio.ServicerContext) -> Any:
        return serde.model_info_to_pb(self.host.describe())

    @rpc_method("ModelService")
    async def Score(self, request: model_service_pb2.ScoreRequest, context: grpc.aio.ServicerContext) -> Any:
        return serde.score_result_to_pb(self.host.score(serde.score_query_from_pb(request)))


def message_limit(settings: ModelServiceSection) -> int:
    """The largest request a valid query can need (UTF-8 texts at 4 bytes a character, plus slack)."""
    return settings.max_batch * (settings.max_text_chars * 4 + 16) + 4 * 1024 * 1024


class ModelServer:
    """A running model service; ``start`` returns the bound port (``listen`` may use port 0)."""

    def __init__(self, settings: ModelServiceSection, host: ModelHost) -> None:
        settings.validate("model_service")
        self.settings = settings
        self.host = host
        self.server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        s = self.settings
        if s.insecure:
            log.warning("model service running with --insecure: no TLS, callers are not verified")
        limit = message_limit(self.settings)
        self.server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                               ("grpc.max_send_message_length", limit)])
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServiceServicer(self.host), self.server)
        self.port = (self.server.add_insecure_port(s.listen) if s.insecure else
                     self.server.add_secure_port(s.listen, server_credentials("model_service", s.ca_cert, s.cert,
                                                                              s.key)))
        if self.port == 0:
            raise ConfigError(f"model_service.listen: cannot bind {self.settings.listen}")
        await self.server.start()
        info = self.host.describe()
        log.info("model service listening", address=s.listen, port=self.port, mtls=not s.insecure, model=info.model,
                 kind=info.kind, hidden_size=info.hidden_size)
        return self.port

    async def stop(self, grace: float = 2.0) -> None:
        if self.server is not None:
            await self.server.stop(grace)
        log.info("model service stopped")
