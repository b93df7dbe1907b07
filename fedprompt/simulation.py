"""Many participants in one process, driving the real coordinator and participant domain code directly
(no sockets): for experiments and benchmarks."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import structlog

from coordinator.jobs import JobManager
from coordinator.store import Store
from fedprompt.config import JobConfig, dump_toml
from fedprompt.data.datasets import label_indices, majority_accuracy
from fedprompt.data.shards import SiteData
from fedprompt.models import Backbone, build_classifier, load_backbone
from fedprompt.protocol import JobDescription, JoinInfo, KeyState, Payload, PrivacyReport, Task, TaskKind
from fedprompt.report import build_report, privacy_spent
from participant.runtime import ParticipantRuntime

log = structlog.get_logger("fedprompt.simulation")


class LocalLink:
    """``CoordinatorLink`` by direct calls into a ``JobManager``: the same domain code the servicers call."""

    def __init__(self, jobs: JobManager, identity: str) -> None:
        self.jobs = jobs
        self.identity = identity

    def describe(self, job: str) -> JobDescription:
        return self.jobs.job(job).describe(self.identity)

    def join(self, job: str, num_train: int, num_test: int, vector_size: int,
             exchange_public_key: bytes = b"") -> JoinInfo:
        return self.jobs.job(job).join(self.identity, num_train, num_test, vector_size, exchange_public_key)

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

    def publish_context(self, job_id: str, public_context: bytes, key_id: bytes) -> None:
        self.jobs.job(job_id).publish_context(self.identity, public_context, key_id)

    def share_key(self, job_id: str, recipient_id: str, sealed_key: bytes) -> None:
        self.jobs.job(job_id).share_key(self.identity, recipient_id, sealed_key)

    def keys(self, job_id: str) -> KeyState:
        return self.jobs.job(job_id).key_state(self.identity)

    def report_privacy(self, report: PrivacyReport) -> None:
        self.jobs.job(report.job_id).report_privacy(self.identity, report)


def simulate(
    config: JobConfig,
    sites: list[SiteData],
    backbone: Backbone | None = None,
    on_round: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run a whole job in-process and return its report (the demo's keys plus ``seconds``)."""
    started = time.perf_counter()
    bb = backbone or load_backbone(config.model.path, config.model.kind)
    jobs = JobManager(Store(":memory:"))
    names = [f"site-{k}" for k in range(len(sites))]
    enrolled = dataclasses.replace(config, job=dataclasses.replace(config.job, allowed_participants=tuple(names)))
    job_id = jobs.create_job(dump_toml(enrolled))
    job = jobs.job(job_id)
    runtimes = [ParticipantRuntime(LocalLink(jobs, name), site, job_id, lambda cfg: build_classifier(cfg, bb))
                for name, site in zip(names, sites, strict=True)]
    for runtime in runtimes:
        runtime.join()
    job.start()
    finished: set[int] = set()
    seen_rounds = 0
    while len(finished) < len(runtimes):
        progressed = False
        for k, runtime in enumerate(runtimes):
            if k in finished or runtime.info is None:
                continue
            runtime.service_keys()
            task = runtime.link.get_task(runtime.info.job_id, 0)
            if task.kind is TaskKind.DONE:
                finished.add(k)
            elif task.kind is not TaskKind.WAIT:
                runtime.handle(task)
                progressed = True
        done_rounds = sum(1 for r in job.view().rounds if r.state == "done")
        if on_round is not None and done_rounds > seen_rounds:
            on_round(done_rounds)
        seen_rounds = done_rounds
        if not progressed and len(finished) < len(runtimes) and job.open is None and job.state.value != "running":
            break
    test_labels = [y for site in sites for y in label_indices(site.test, config.task.label_names)]
    model = runtimes[0].model
    assert model is not None
    view = job.view()
    return build_report(view, majority_accuracy(test_labels), model.vector_size, model.plm_parameters,
                        seconds=round(time.perf_counter() - started, 2), mode="simulation", dp=config.dp.enabled,
                        **privacy_spent(view))
