"""How a participant reaches its coordinator: one small interface, served over gRPC by the daemon and by
direct calls in the in-process simulation, so both run the same participant code."""

from __future__ import annotations

from typing import Protocol

from fedprompt.protocol import JobDescription, JoinInfo, Payload, PrivacyReport, Task


class CoordinatorLink(Protocol):
    def describe(self, job: str) -> JobDescription: ...

    def join(self, job: str, num_train: int, num_test: int, vector_size: int) -> JoinInfo: ...

    def get_task(self, job_id: str, wait_s: float) -> Task: ...

    def download(self, job_id: str, version: int) -> Payload: ...

    def upload(self, payload: Payload) -> None: ...

    def report(self, job_id: str, version: int, metrics: dict[str, float], num_examples: int) -> None: ...

    def report_privacy(self, report: PrivacyReport) -> None: ...
