"""Many participants in one process, driving the real coordinator and participant domain code directly
(no sockets): for experiments and benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from coordinator.jobs import JobManager
from coordinator.store import Store
from fedprompt.config import JobConfig, ModelServiceSection, dump_toml
from fedprompt.data.datasets import label_indices, majority_accuracy
from fedprompt.data.shards import SiteData
from fedprompt.models import Backbone, build_classifier, load_backbone
from fedprompt.protocol import JobDescription, JoinInfo, Payload, Task, TaskKind
from fedprompt.report import build_report
from participant.blackbox import BlackboxLearner
from participant.learner import Learner
from participant.model_service import ModelHost
from participant.runtime import ParticipantRuntime
from participant.train import GradientLearner

log = structlog.get_logger("fedprompt.simulation")


class LocalLink:
    """``CoordinatorLink`` by direct calls into a ``JobManager``: the same domain code the servicers call."""

    def __init__(self, jobs: JobManager, identity: str) -> None:
        self.jobs = jobs
        self.identity = identity

    def describe(self, job: str) -> JobDescription:
        return self.jobs.job(job).describe()

    def join(self, job: str, num_train: int, num_test: int, vector_size: int) -> JoinInfo:
        return self.jobs.job(job).join(self.identity, num_train, num_test, vector_size)

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


def local_learner(config: JobConfig, backbone: Backbone) -> Learner:
    """A participant's learner on a shared in-process backbone; black-box learners query it through a
    ``ModelHost`` (the model service's domain object), exactly as they would over gRPC."""
    if config.blackbox.enabled:
        host = ModelHost(backbone, ModelServiceSection(model=config.model.path, kind=config.model.kind,
                                                       max_batch=max(64, config.blackbox.batch_size),
                                                       max_prompt_tokens=config.model.prompt_length,
                                                       max_length=config.model.max_length))
        return BlackboxLearner(config, host)
    return GradientLearner(build_classifier(config, backbone), config.train)


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
    job_id = jobs.create_job(dump_toml(config))
    job = jobs.job(job_id)
    runtimes = [ParticipantRuntime(LocalLink(jobs, f"site-{k}"), site, job_id, lambda cfg: local_learner(cfg, bb))
                for k, site in enumerate(sites)]
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
    learner = runtimes[0].learner
    assert learner is not None
    return build_report(job.view(), majority_accuracy(test_labels), learner.vector_size, bb.num_parameters,
                        seconds=round(time.perf_counter() - started, 2), runner="simulation")
