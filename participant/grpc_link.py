"""``CoordinatorLink`` over gRPC, with retries (exponential backoff + jitter) while the coordinator is away."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

import grpc
import structlog

from fedprompt import serde
from fedprompt.errors import FedPromptError
from fedprompt.payload import ChunkAssembler
from fedprompt.protocol import JobDescription, JoinInfo, Payload, Task
from fedprompt.rpc import error_from_rpc
from fedprompt.v1 import participant_pb2, participant_pb2_grpc

log = structlog.get_logger("participant.grpc_link")

T = TypeVar("T")
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
MAX_DOWNLOAD_BYTES = 256 * 1024 * 1024


class CoordinatorUnreachable(FedPromptError):
    """The coordinator did not answer within the participant's patience (``give_up_after_s``)."""


def call_with_retry(fn: Callable[[], T], *, what: str, service: str, target: str, retry_initial_s: float,
                    retry_max_s: float, give_up_after_s: float, unreachable: type[FedPromptError]) -> T:
    """Call ``fn``, retrying UNAVAILABLE / DEADLINE_EXCEEDED with exponential backoff and jitter; any other
    status becomes its domain error, and ``unreachable`` is raised once ``give_up_after_s`` has passed."""
    delay = retry_initial_s
    started = time.monotonic()
    while True:
        try:
            return fn()
        except grpc.RpcError as exc:
            if exc.code() not in RETRYABLE:
                raise error_from_rpc(exc) from exc
            waited = time.monotonic() - started
            if waited >= give_up_after_s:
                raise unreachable(f"{service} at {target} unreachable for {waited:.0f} s ({what}): {exc.details()}") \
                    from exc
            pause = min(delay, retry_max_s) * (0.5 + random.random() / 2)
            log.warning(f"{service} not reachable, retrying", target=target, call=what, status=exc.code().name,
                        retry_in_s=round(pause, 2))
            time.sleep(pause)
            delay = min(delay * 2, retry_max_s)


class GrpcLink:
    """Talks to a coordinator; identity is carried by the transport (metadata in insecure mode)."""

    def __init__(self, target: str, identity: str, retry_initial_s: float = 0.5, retry_max_s: float = 10.0,
                 give_up_after_s: float = 120.0, rpc_timeout_s: float = 60.0) -> None:
        self.target = target
        self.channel = grpc.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", 8 * 1024 * 1024),
            # Notice a dead path (cut link, crashed host) within seconds instead of waiting for TCP.
            ("grpc.keepalive_time_ms", 5000), ("grpc.keepalive_timeout_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0),
        ])
        self.stub = participant_pb2_grpc.ParticipantServiceStub(self.channel)
        self.metadata = (("x-fedprompt-identity", identity),)
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.give_up_after_s = give_up_after_s
        self.rpc_timeout_s = rpc_timeout_s
        self.bytes_up = 0
        self.bytes_down = 0

    def close(self) -> None:
        self.channel.close()

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        return call_with_retry(fn, what=what, service="coordinator", target=self.target,
                               retry_initial_s=self.retry_initial_s, retry_max_s=self.retry_max_s,
                               give_up_after_s=self.give_up_after_s, unreachable=CoordinatorUnreachable)

    def describe(self, job: str) -> JobDescription:
        request = participant_pb2.DescribeJobRequest(job=job)
        return serde.description_from_pb(self._call("DescribeJob", lambda: self.stub.DescribeJob(
            request, metadata=self.metadata, timeout=self.rpc_timeout_s)))

    def join(self, job: str, num_train: int, num_test: int, vector_size: int) -> JoinInfo:
        request = participant_pb2.JoinRequest(job=job, num_train_examples=num_train, num_test_examples=num_test,
                                              vector_size=vector_size)
        return serde.join_from_pb(self._call("Join", lambda: self.stub.Join(
            request, metadata=self.metadata, timeout=self.rpc_timeout_s)))

    def get_task(self, job_id: str, wait_s: float) -> Task:
        request = participant_pb2.GetTaskRequest(job_id=job_id, wait_ms=int(wait_s * 1000))
        return serde.task_from_pb(self._call("GetTask", lambda: self.stub.GetTask(
            request, metadata=self.metadata, timeout=wait_s + self.rpc_timeout_s)))

    def download(self, job_id: str, version: int) -> Payload:
        request = participant_pb2.DownloadGlobalRequest(job_id=job_id, version=version)

        def fetch() -> Payload:
            stream = self.stub.DownloadGlobal(request, metadata=self.metadata, timeout=self.rpc_timeout_s)
            first = next(stream)
            if first.WhichOneof("part") != "header":
                raise FedPromptError("coordinator sent a download without a header")
            assembler = ChunkAssembler(serde.header_from_pb(first.header), MAX_DOWNLOAD_BYTES)
            for message in stream:
                assembler.add(message.chunk.index, message.chunk.data)
            return assembler.finish()

        payload = self._call("DownloadGlobal", fetch)
        self.bytes_down += len(payload.data)
        return payload

    def upload(self, payload: Payload) -> None:
        def send() -> object:
            messages = serde.payload_messages(payload, participant_pb2.UploadUpdateRequest)
            return self.stub.UploadUpdate(messages, metadata=self.metadata, timeout=self.rpc_timeout_s)

        self._call("UploadUpdate", send)
        self.bytes_up += len(payload.data)

    def report(self, job_id: str, version: int, metrics: dict[str, float], num_examples: int) -> None:
        request = participant_pb2.ReportMetricsRequest(job_id=job_id, version=version, metrics=metrics,
                                                       num_examples=num_examples)
        self._call("ReportMetrics", lambda: self.stub.ReportMetrics(
            request, metadata=self.metadata, timeout=self.rpc_timeout_s))
