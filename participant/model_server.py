"""Wires the query-only model service: a thin gRPC servicer over ``ModelHost`` and its server."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import structlog

from fedprompt.config import ModelServiceSection
from fedprompt.errors import ConfigError
from fedprompt.participant.model_service import ModelHost
from fedprompt.v1 import model_service_pb2, model_service_pb2_grpc
from fedprompt.wire import serde
from fedprompt.wire.channel import server_credentials
from fedprompt.wire.rpc import rpc_method

log = structlog.get_logger("participant.model_server")


class ModelServiceServicer(model_service_pb2_grpc.ModelServiceServicer):
    """Decode, call the host, encode; the host's typed errors become status codes in ``rpc_method``.

    Forward passes run on one worker thread, off the event loop: a query takes seconds, and on the loop it
    would stall every other caller's DescribeModel, keepalives and deadline handling until it finished.  One
    worker, because the ONNX session already uses ``settings.threads`` and queries are answered in order.
    """

    def __init__(self, host: ModelHost, worker: ThreadPoolExecutor) -> None:
        self.host = host
        self.worker = worker

    @rpc_method("ModelService")
    async def DescribeModel(self, request: model_service_pb2.DescribeModelRequest,
                            context: grpc.aio.ServicerContext) -> Any:
        return serde.model_info_to_pb(self.host.describe())

    @rpc_method("ModelService")
    async def Score(self, request: model_service_pb2.ScoreRequest, context: grpc.aio.ServicerContext) -> Any:
        query = serde.score_query_from_pb(request)
        result = await asyncio.get_running_loop().run_in_executor(self.worker, self.host.score, query)
        return serde.score_result_to_pb(result)


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
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-score")
        self.port = 0

    async def start(self) -> int:
        s = self.settings
        if s.insecure:
            log.warning("model service running with --insecure: no TLS, callers are not verified")
        limit = message_limit(self.settings)
        self.server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                               ("grpc.max_send_message_length", limit)])
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServiceServicer(self.host, self.worker),
                                                                 self.server)
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
        self.worker.shutdown(wait=True)
        log.info("model service stopped")
