"""A black-box participant's view of its model service over gRPC (a ``ModelEndpoint``), with retries."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from fedprompt.errors import FedPromptError
from fedprompt.participant.grpc_link import call_with_retry
from fedprompt.protocol import ModelInfo, ScoreQuery, ScoreResult
from fedprompt.v1 import model_service_pb2, model_service_pb2_grpc
from fedprompt.wire import serde
from fedprompt.wire.channel import ClientTls, open_channel

MAX_RESPONSE_BYTES = 64 * 1024 * 1024
T = TypeVar("T")


class ModelServiceUnreachable(FedPromptError):
    """The model service did not answer within the participant's patience (``give_up_after_s``)."""


class ModelServiceClient:
    """Talks to one ``fedprompt model serve`` endpoint; never sees parameters, only logits and losses."""

    def __init__(self, target: str, retry_initial_s: float = 0.5, retry_max_s: float = 10.0,
                 give_up_after_s: float = 120.0, rpc_timeout_s: float = 300.0, tls: ClientTls | None = None) -> None:
        self.target = target
        self.channel = open_channel(target, tls, [("grpc.max_receive_message_length", MAX_RESPONSE_BYTES),
                                                  ("grpc.max_send_message_length", MAX_RESPONSE_BYTES)])
        self.stub = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.give_up_after_s = give_up_after_s
        self.rpc_timeout_s = rpc_timeout_s

    def close(self) -> None:
        self.channel.close()

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        return call_with_retry(fn, what=what, service="model service", target=self.target,
                               retry_initial_s=self.retry_initial_s, retry_max_s=self.retry_max_s,
                               give_up_after_s=self.give_up_after_s, unreachable=ModelServiceUnreachable)

    def describe(self) -> ModelInfo:
        request = model_service_pb2.DescribeModelRequest()
        return serde.model_info_from_pb(self._call(
            "DescribeModel", lambda: self.stub.DescribeModel(request, timeout=self.rpc_timeout_s)))

    def score(self, query: ScoreQuery) -> ScoreResult:
        request = serde.score_query_to_pb(query)
        return serde.score_result_from_pb(self._call(
            "Score", lambda: self.stub.Score(request, timeout=self.rpc_timeout_s)))
