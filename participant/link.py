"""How a participant reaches its coordinator: one small interface, served over gRPC by the daemon and by
direct calls in the in-process simulation, so both run the same participant code."""

from __future__ import annotations

from typing import Protocol

from fedprompt.errors import DuplicateUpdate, PermissionDenied, PreconditionFailed
from fedprompt.protocol import JobDescription, JoinInfo, KeyState, Payload, PrivacyReport, Task

# What the coordinator answers to a task it no longer wants (round closed or restarted, not selected after
# all, update already in): the participant drops the task and asks for the next one.
ROUND_MOVED_ON = (PreconditionFailed, PermissionDenied, DuplicateUpdate)


class CoordinatorLink(Protocol):
    def describe(self, job: str) -> JobDescription: ...

    def join(self, job: str, num_train: int, num_test: int, vector_size: int,
             exchange_public_key: bytes = b"") -> JoinInfo: ...

    def get_task(self, job_id: str, wait_s: float) -> Task: ...

    def download(self, job_id: str, version: int) -> Payload: ...

    def upload(self, payload: Payload) -> None: ...

    def report(self, job_id: str, version: int, metrics: dict[str, float], num_examples: int) -> None: ...

    def publish_context(self, job_id: str, public_context: bytes, key_id: bytes) -> None: ...

    def share_key(self, job_id: str, recipient_id: str, sealed_key: bytes) -> None: ...

    def keys(self, job_id: str) -> KeyState: ...

    def report_privacy(self, report: PrivacyReport) -> None: ...

    def gram(self, job_id: str, round_: int) -> Payload: ...

    def report_gram(self, job_id: str, round_: int, scalars: list[float]) -> None: ...
