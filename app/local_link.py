"""The in-process door into the coordinator: ``CoordinatorLink`` by direct calls into a ``JobManager``.

The network door is the daemon's ``GrpcLink`` (``fedprompt.participant.grpc_link``); both implement the
interface in ``fedprompt.protocol``, so ``fedprompt simulate`` and the benchmarks run the same participant
code, and the same coordinator validation, selection and aggregation, as production.
"""

from __future__ import annotations

import dataclasses

from fedprompt.coordinator.jobs import JobManager
from fedprompt.crypto.audit import Verdict
from fedprompt.crypto.pki import RevocationList
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
)


class LocalLink:
    """``CoordinatorLink`` by direct calls into a ``JobManager``: the same domain code the servicers call.

    ``revocations``: the federation CRL to relay with the keys, as the gRPC door relays its own (none: no CRL)."""

    def __init__(self, jobs: JobManager, identity: str, revocations: RevocationList | None = None) -> None:
        self.jobs = jobs
        self.identity = identity
        self.revocations = revocations

    def describe(self, job: str) -> JobDescription:
        return self.jobs.job(job).describe(self.identity)

    def join(self, job: str, num_train: int, num_test: int, vector_size: int,
             exchange_public_key: bytes = b"", exchange_attestation: bytes = b"") -> JoinInfo:
        return self.jobs.job(job).join(self.identity, num_train, num_test, vector_size, exchange_public_key,
                                       exchange_attestation)

    def get_task(self, job_id: str, wait_s: float) -> Task:
        job = self.jobs.job(job_id)
        job.tick()
        return job.next_task(self.identity)

    def download(self, job_id: str, version: int) -> Payload:
        return self.jobs.job(job_id).global_payload(self.identity, version)

    def upload(self, payload: Payload) -> None:
        self.jobs.job(payload.job_id).submit(self.identity, payload)

    def report(self, job_id: str, version: int, metrics: dict[str, float], num_examples: int) -> None:
        self.jobs.job(job_id).report_metrics(self.identity, version, metrics, num_examples)

    def publish_context(self, job_id: str, public_context: bytes, key_id: bytes, attestation: bytes = b"") -> None:
        self.jobs.job(job_id).relay.publish_context(self.identity, public_context, key_id, attestation)

    def share_key(self, job_id: str, recipient_id: str, sealed_key: bytes) -> None:
        self.jobs.job(job_id).relay.share_key(self.identity, recipient_id, sealed_key)

    def keys(self, job_id: str) -> KeyState:
        state = self.jobs.job(job_id).relay.key_state(self.identity)
        if self.revocations is None:
            return state
        self.revocations.refresh()
        return dataclasses.replace(state, crl=self.revocations.pem)

    def report_key_fault(self, job_id: str, reason: str) -> None:
        self.jobs.refuse_keys(job_id, self.identity, reason)

    def report_privacy(self, report: PrivacyReport) -> None:
        self.jobs.job(report.job_id).report_privacy(self.identity, report)

    def gram(self, job_id: str, round_: int) -> Payload:
        return self.jobs.job(job_id).gram_payload(self.identity, round_)

    def report_gram(self, job_id: str, round_: int, scalars: list[float]) -> None:
        self.jobs.job(job_id).report_gram(self.identity, round_, scalars)

    def check_bundle(self, job_id: str, round_: int) -> Payload:
        return self.jobs.job(job_id).check_bundle(self.identity, round_)

    def report_check(self, job_id: str, round_: int, verdicts: list[Verdict]) -> None:
        self.jobs.job(job_id).report_check(self.identity, round_, verdicts)

    def threshold_keys(self, job_id: str) -> ThresholdKeyState:
        crl = b""
        if self.revocations is not None:
            self.revocations.refresh()
            crl = self.revocations.pem
        relay = self.jobs.job(job_id).relay
        return all_pages(lambda page: relay.threshold_keys(self.identity, crl, page))

    def publish_share(self, job_id: str, share: bytes, attestation: bytes) -> None:
        self.jobs.job(job_id).relay.publish_share(self.identity, share, attestation)

    def deal(self, job_id: str, sealed: dict[str, bytes]) -> None:
        self.jobs.job(job_id).relay.deal(self.identity, sealed)

    def decryption(self, job_id: str, round_: int) -> Payload:
        return self.jobs.job(job_id).relay.decryption(self.identity, round_)

    def submit_share(self, job_id: str, round_: int, attempt: int, share: bytes) -> None:
        self.jobs.job(job_id).relay.submit_share(self.identity, round_, attempt, share)

    def gram_keys(self, job_id: str) -> GramKeyState:
        relay = self.jobs.job(job_id).relay
        return all_gram_pages(lambda page: relay.gram_keys(self.identity, page))

    def publish_gram_key(self, job_id: str, round_: int, element: int, message: bytes, attestation: bytes) -> None:
        self.jobs.job(job_id).relay.publish_gram_key(self.identity, round_, element, message, attestation)
