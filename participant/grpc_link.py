"""``CoordinatorLink`` over gRPC, with retries (exponential backoff + jitter) while the coordinator is away.

Every call is safe to repeat: reads are idempotent, ``Join`` is an upsert, and an upload is keyed by
(job, round, participant) with its SHA-256, so a stream cut mid-way is simply sent again from the start and a
retry of an upload that did arrive is acknowledged without being counted twice.

A link may be given several coordinator addresses (``"host-a:50051,host-b:50051"``: the replicas of a failover
pair, ``coordinator.lease``): it talks to one at a time and moves to the next whenever a call finds the one it
uses UNAVAILABLE (down, a standby that does not serve yet, or a deposed replica), so the retries above walk
the addresses round-robin until the active replica answers.  Safe for the same reason as a retry: every call
may be repeated, on whichever replica is active.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
import structlog

from fedprompt.crypto.audit import Verdict
from fedprompt.crypto.gram import GRAM_ENCODING
from fedprompt.errors import FedPromptError
from fedprompt.protocol import (
    GramKeyState,
    JobDescription,
    JoinInfo,
    KeyState,
    Payload,
    PrivacyReport,
    Task,
    ThresholdKeyState,
    all_gram_pages,
    all_pages,
    deal_batches,
)
from fedprompt.v1 import participant_pb2, participant_pb2_grpc
from fedprompt.wire import serde
from fedprompt.wire.channel import ClientTls, open_channel
from fedprompt.wire.payload import ChunkAssembler
from fedprompt.wire.rpc import error_from_rpc, retry_after

log = structlog.get_logger("participant.grpc_link")

T = TypeVar("T")
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
MAX_DOWNLOAD_BYTES = 256 * 1024 * 1024


class CoordinatorUnreachable(FedPromptError):
    """The coordinator did not answer within the participant's patience (``give_up_after_s``)."""


def coordinator_addresses(target: str) -> list[str]:
    """The addresses in a ``coordinator`` setting: one ``host:port``, or several separated by commas."""
    return [address.strip() for address in target.split(",") if address.strip()]


def call_with_retry(fn: Callable[[], T], *, what: str, service: str, target: str, retry_initial_s: float,
                    retry_max_s: float, give_up_after_s: float, unreachable: type[FedPromptError]) -> T:
    """Call ``fn``, retrying UNAVAILABLE / DEADLINE_EXCEEDED with exponential backoff and jitter, and a refusal
    that says when to retry (a rate or upload limit: ``rpc.retry_after``) no sooner than it says; any other
    status becomes its domain error, and ``unreachable`` is raised once ``give_up_after_s`` has passed (the
    limit's own error, if a busy coordinator kept refusing)."""
    delay = retry_initial_s
    started = time.monotonic()
    failures = 0
    while True:
        try:
            result = fn()
        except grpc.RpcError as exc:
            busy = retry_after(exc)
            if exc.code() not in RETRYABLE and busy is None:
                if failures:  # it answered, if with a refusal (e.g. a retried report it already had)
                    log.info(f"{service} reachable again", target=target, call=what, failed_attempts=failures,
                             after_s=round(time.monotonic() - started, 1), status=exc.code().name)
                raise error_from_rpc(exc) from exc
            waited = time.monotonic() - started
            if busy is not None and waited + busy > give_up_after_s:  # asked to wait longer than its patience
                raise error_from_rpc(exc) from exc
            if waited >= give_up_after_s:
                raise unreachable(f"{service} at {target} unreachable for {waited:.0f} s ({what}): {exc.details()}") \
                    from exc
            pause = max(busy or 0.0, min(delay, retry_max_s) * (0.5 + random.random() / 2))
            log.warning(f"{service} busy, retrying" if busy is not None else f"{service} not reachable, retrying",
                        target=target, call=what, status=exc.code().name, retry_in_s=round(pause, 2))
            time.sleep(pause)
            delay = min(delay * 2, retry_max_s)
            failures += 1
            continue
        if failures:
            log.info(f"{service} reachable again", target=target, call=what, failed_attempts=failures,
                     after_s=round(time.monotonic() - started, 1))
        return result


def channel_options(retry_initial_s: float = 0.5, retry_max_s: float = 10.0) -> list[tuple[str, int]]:
    """A participant's channel to the coordinator: reconnects as often as its calls retry, pings to notice a dead
    path."""
    return [
        ("grpc.max_receive_message_length", 8 * 1024 * 1024),
        # gRPC's own reconnect backoff (up to 120 s by default) would keep a channel down long after the
        # coordinator is back; cap it like the call retries.
        ("grpc.initial_reconnect_backoff_ms", int(retry_initial_s * 1000)),
        ("grpc.min_reconnect_backoff_ms", int(retry_initial_s * 1000)),
        ("grpc.max_reconnect_backoff_ms", int(retry_max_s * 1000)),
        # Notice a dead path (cut link, crashed host) within seconds instead of waiting for TCP.
        ("grpc.keepalive_time_ms", 5000), ("grpc.keepalive_timeout_ms", 5000),
        ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0),
    ]


class GrpcLink:
    """Talks to a coordinator (at one of the comma-separated addresses of ``target``, moving to the next on
    UNAVAILABLE); identity is carried by the transport: the client certificate in ``tls``, or (with ``tls=None``,
    for an ``--insecure`` coordinator only) the ``identity`` metadata header."""

    def __init__(self, target: str, identity: str = "", retry_initial_s: float = 0.5, retry_max_s: float = 10.0,
                 give_up_after_s: float = 120.0, rpc_timeout_s: float = 60.0, tls: ClientTls | None = None,
                 stubs: list[Any] | None = None) -> None:
        """``stubs``: blocking ``ParticipantService`` calls to make instead of over channels of its own, one per
        address of ``target`` (the load client ``app.synthetic`` shares them among thousands of links); the link
        then opens no channel."""
        self.addresses = coordinator_addresses(target)
        if not self.addresses:
            raise FedPromptError(f"no coordinator address in {target!r}")
        self.target = target
        self.channels: list[grpc.Channel] = []
        if stubs is not None:
            if len(stubs) != len(self.addresses):
                raise FedPromptError(f"{len(stubs)} stubs for the {len(self.addresses)} addresses of {target!r}")
            self.stubs = stubs
        else:
            connected = [self._connect(address, tls, retry_initial_s, retry_max_s) for address in self.addresses]
            self.channels = [channel for channel, _ in connected]
            self.stubs = [stub for _, stub in connected]
        self.current = 0  # the address in use: the last one that answered, or the next to try
        self.metadata = () if tls is not None else (("x-fedprompt-identity", identity),)
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.give_up_after_s = give_up_after_s
        self.rpc_timeout_s = rpc_timeout_s
        self.bytes_up = 0
        self.bytes_down = 0

    @staticmethod
    def _connect(target: str, tls: ClientTls | None, retry_initial_s: float,
                 retry_max_s: float) -> tuple[grpc.Channel, participant_pb2_grpc.ParticipantServiceStub]:
        channel = open_channel(target, tls, channel_options(retry_initial_s, retry_max_s))
        return channel, participant_pb2_grpc.ParticipantServiceStub(channel)

    @property
    def stub(self) -> Any:
        """The stub of the address in use."""
        return self.stubs[self.current]

    def close(self) -> None:
        for channel in self.channels:
            channel.close()

    def _failover(self, exc: grpc.RpcError) -> None:
        """After an UNAVAILABLE, use the next address (with a single address, nothing changes)."""
        if len(self.addresses) > 1 and exc.code() is grpc.StatusCode.UNAVAILABLE:
            left = self.addresses[self.current]
            self.current = (self.current + 1) % len(self.addresses)
            log.info("coordinator unavailable: trying the next address", left=left,
                     next=self.addresses[self.current])

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        def attempt() -> T:
            try:
                return fn()
            except grpc.RpcError as exc:
                self._failover(exc)
                raise

        return call_with_retry(attempt, what=what, service="coordinator", target=self.target,
                               retry_initial_s=self.retry_initial_s, retry_max_s=self.retry_max_s,
                               give_up_after_s=self.give_up_after_s, unreachable=CoordinatorUnreachable)

    def describe(self, job: str) -> JobDescription:
        request = participant_pb2.DescribeJobRequest(job=job)
        return serde.description_from_pb(self._call("DescribeJob", lambda: self.stub.DescribeJob(
            request, metadata=self.metadata, timeout=self.rpc_timeout_s)))

    def join(self, job: str, num_train: int, num_test: int, vector_size: int,
             exchange_public_key: bytes = b"", exchange_attestation: bytes = b"") -> JoinInfo:
        request = participant_pb2.JoinRequest(job=job, num_train_examples=num_train, num_test_examples=num_test,
                                              vector_size=vector_size, exchange_public_key=exchange_public_key,
                                              exchange_attestation=exchange_attestation)
        return serde.join_from_pb(self._call("Join", lambda: self.stub.Join(
            request, metadata=self.metadata, timeout=self.rpc_timeout_s)))

    def get_task(self, job_id: str, wait_s: float) -> Task:
        request = participant_pb2.GetTaskRequest(job_id=job_id, wait_ms=int(wait_s * 1000))
        return serde.task_from_pb(self._call("GetTask", lambda: self.stub.GetTask(
            request, metadata=self.metadata, timeout=wait_s + self.rpc_timeout_s)))

    def download(self, job_id: str, version: int) -> Payload:
        request = participant_pb2.DownloadGlobalRequest(job_id=job_id, version=version)
        return self._stream("DownloadGlobal", lambda: self.stub.DownloadGlobal(
            request, metadata=self.metadata, timeout=self.rpc_timeout_s))

    def check_bundle(self, job_id: str, round_: int) -> Payload:
        request = participant_pb2.DownloadCheckRequest(job_id=job_id, round=round_)
        return self._stream("DownloadCheck", lambda: self.stub.DownloadCheck(
            request, metadata=self.metadata, timeout=self.rpc_timeout_s))

    def report_check(self, job_id: str, round_: int, verdicts: list[Verdict]) -> None:
        request = serde.verdicts_to_pb(job_id, round_, verdicts)
        self._call("ReportCheck", lambda: self.stub.ReportCheck(request, metadata=self.metadata,
                                                                timeout=self.rpc_timeout_s))

    def _stream(self, rpc: str, call: Callable[[], Iterator[participant_pb2.DownloadGlobalResponse]]) -> Payload:
        """A payload streamed as a header and its chunks, assembled with every check of an upload."""
        def fetch() -> Payload:
            stream = call()
            first = next(stream)
            if first.WhichOneof("part") != "header":
                raise FedPromptError(f"coordinator sent a {rpc} stream without a header")
            assembler = ChunkAssembler(serde.header_from_pb(first.header), MAX_DOWNLOAD_BYTES)
            for message in stream:
                assembler.add(message.chunk.index, message.chunk.data)
            return assembler.finish()

        payload = self._call(rpc, fetch)
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

    def heartbeat(self, job_id: str, timeout_s: float) -> str:
        """One sign of life, not retried (the next beat is the retry); returns the job's state."""
        request = participant_pb2.HeartbeatRequest(job_id=job_id)
        try:
            return str(self.stub.Heartbeat(request, metadata=self.metadata, timeout=timeout_s).job_state)
        except grpc.RpcError as exc:
            self._failover(exc)
            raise error_from_rpc(exc) from exc

    def publish_context(self, job_id: str, public_context: bytes, key_id: bytes, attestation: bytes = b"") -> None:
        request = participant_pb2.PublishContextRequest(job_id=job_id, public_context=public_context, key_id=key_id,
                                                        attestation=attestation)
        self._call("PublishContext", lambda: self.stub.PublishContext(
            request, metadata=self.metadata, timeout=self.rpc_timeout_s))

    def share_key(self, job_id: str, recipient_id: str, sealed_key: bytes) -> None:
        request = participant_pb2.ShareKeyRequest(job_id=job_id, recipient_id=recipient_id, sealed_key=sealed_key)
        self._call("ShareKey", lambda: self.stub.ShareKey(request, metadata=self.metadata, timeout=self.rpc_timeout_s))

    def keys(self, job_id: str) -> KeyState:
        request = participant_pb2.GetKeysRequest(job_id=job_id)
        return serde.keys_from_pb(self._call("GetKeys", lambda: self.stub.GetKeys(
            request, metadata=self.metadata, timeout=self.rpc_timeout_s)))

    def report_key_fault(self, job_id: str, reason: str) -> None:
        request = participant_pb2.ReportKeyFaultRequest(job_id=job_id, reason=reason)
        self._call("ReportKeyFault", lambda: self.stub.ReportKeyFault(
            request, metadata=self.metadata, timeout=self.rpc_timeout_s))

    def gram(self, job_id: str, round_: int) -> Payload:
        request = participant_pb2.GetGramRequest(job_id=job_id, round=round_)
        response = self._call("GetGram", lambda: self.stub.GetGram(request, metadata=self.metadata,
                                                                    timeout=self.rpc_timeout_s))
        payload = serde.gram_from_pb(job_id, round_, GRAM_ENCODING, response)
        self.bytes_down += len(payload.data)
        return payload

    def report_gram(self, job_id: str, round_: int, scalars: list[float]) -> None:
        request = participant_pb2.ReportGramRequest(job_id=job_id, round=round_, scalars=scalars)
        self._call("ReportGram", lambda: self.stub.ReportGram(request, metadata=self.metadata,
                                                              timeout=self.rpc_timeout_s))

    def report_privacy(self, report: PrivacyReport) -> None:
        request = serde.privacy_to_pb(report)
        self._call("ReportPrivacy", lambda: self.stub.ReportPrivacy(
            request, metadata=self.metadata, timeout=self.rpc_timeout_s))

    def threshold_keys(self, job_id: str) -> ThresholdKeyState:
        def page(k: int) -> ThresholdKeyState:
            request = participant_pb2.GetThresholdKeysRequest(job_id=job_id, page=k)
            return serde.threshold_keys_from_pb(self._call("GetThresholdKeys", lambda: self.stub.GetThresholdKeys(
                request, metadata=self.metadata, timeout=self.rpc_timeout_s)))

        return all_pages(page)

    def publish_share(self, job_id: str, share: bytes, attestation: bytes) -> None:
        request = participant_pb2.PublishShareRequest(job_id=job_id, share=share, attestation=attestation)
        self._call("PublishShare", lambda: self.stub.PublishShare(request, metadata=self.metadata,
                                                                  timeout=self.rpc_timeout_s))

    def deal(self, job_id: str, sealed: dict[str, bytes]) -> None:
        """The dealing in batches that each fit a message (``protocol.deal_batches``); a batch resent after a lost
        answer changes nothing (the relay keeps a recipient's first blob)."""
        for batch in deal_batches(sealed):
            request = serde.dealing_to_pb(job_id, batch)
            self._call("DealShares", functools.partial(self.stub.DealShares, request, metadata=self.metadata,
                                                       timeout=self.rpc_timeout_s))

    def decryption(self, job_id: str, round_: int) -> Payload:
        request = participant_pb2.DownloadDecryptionRequest(job_id=job_id, round=round_)
        return self._stream("DownloadDecryption", lambda: self.stub.DownloadDecryption(
            request, metadata=self.metadata, timeout=self.rpc_timeout_s))

    def submit_share(self, job_id: str, round_: int, attempt: int, share: bytes) -> None:
        request = participant_pb2.SubmitShareRequest(job_id=job_id, round=round_, attempt=attempt, masked_share=share)
        self._call("SubmitShare", lambda: self.stub.SubmitShare(request, metadata=self.metadata,
                                                                timeout=self.rpc_timeout_s))

    def gram_keys(self, job_id: str) -> GramKeyState:
        def page(k: int) -> GramKeyState:
            request = participant_pb2.GetGramKeysRequest(job_id=job_id, page=k)
            return serde.gram_keys_from_pb(self._call("GetGramKeys", lambda: self.stub.GetGramKeys(
                request, metadata=self.metadata, timeout=self.rpc_timeout_s)))

        return all_gram_pages(page)

    def publish_gram_key(self, job_id: str, round_: int, element: int, message: bytes, attestation: bytes) -> None:
        request = participant_pb2.PublishGramKeyRequest(job_id=job_id, round=round_, element=element, message=message,
                                                        attestation=attestation)
        self._call("PublishGramKey", lambda: self.stub.PublishGramKey(request, metadata=self.metadata,
                                                                      timeout=self.rpc_timeout_s))
