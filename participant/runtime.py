"""A participant's work, independent of transport: join, then evaluate / train on each task it is given.

Only the exchanged vector leaves the site: the initial vector (first member only), one delta per round,
and evaluation metrics.  Every submitted delta is also kept in the site's state directory, an audit trail of
exactly what left the institution.  How the vector is learned is the ``Learner``'s business: a local PLM
copy with gradients, or a black-box search that only queries a model service (and then this process never
imports torch).
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import structlog

from fedprompt.config import JobConfig, parse_toml
from fedprompt.data.datasets import label_indices
from fedprompt.data.shards import SiteData
from fedprompt.errors import DuplicateUpdate, FedPromptError, PermissionDenied, PreconditionFailed
from fedprompt.payload import FLOAT32, decode_vector, encode_vector
from fedprompt.protocol import JoinInfo, Payload, Task, TaskKind
from participant.learner import Learner, ProgressFn, peak_rss_mb
from participant.link import CoordinatorLink

log = structlog.get_logger("participant.runtime")

LearnerFactory = Callable[[JobConfig], Learner]


class ParticipantRuntime:
    """Runs one site's side of a job against any ``CoordinatorLink``."""

    def __init__(
        self,
        link: CoordinatorLink,
        site: SiteData,
        job_ref: str,
        learner_factory: LearnerFactory,
        state_dir: Path | None = None,
        progress: Callable[[str], ProgressFn | None] | None = None,
    ) -> None:
        self.link = link
        self.site = site
        self.job_ref = job_ref
        self.learner_factory = learner_factory
        self.state_dir = state_dir
        self.progress = progress
        self.info: JoinInfo | None = None
        self.config: JobConfig | None = None
        self.learner: Learner | None = None
        self._globals: dict[int, np.ndarray] = {}
        self.log = log

    def join(self) -> JoinInfo:
        """Learn the job's config, build its learner, join, and provide the initial vector if asked to."""
        description = self.link.describe(self.job_ref)
        self.config = parse_toml(description.config_toml, JobConfig, "job config from coordinator")
        self._labels("train")  # refuse to join with data whose labels the job does not know
        learner = self.learner_factory(self.config)
        self.learner = learner
        info = self.link.join(description.job_id, len(self.site.train), len(self.site.test), learner.vector_size)
        self.info = info
        self.log = log.bind(job_id=info.job_id, participant=info.participant_id)
        if info.provide_initial_prompt:
            self.link.upload(Payload(info.job_id, 0, FLOAT32, learner.vector_size,
                                     encode_vector(learner.initial_vector())))
            self.log.info("initial vector provided", vector_size=learner.vector_size, mode=self.config.mode)
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            (self.state_dir / "participant.json").write_text(json.dumps(
                {"job_id": info.job_id, "participant_id": info.participant_id}), encoding="utf-8")
        return info

    def _learner(self) -> Learner:
        if self.learner is None:
            raise FedPromptError("join the job before working on it")
        return self.learner

    def _labels(self, which: str) -> list[int]:
        assert self.config is not None
        return label_indices(getattr(self.site, which), self.config.task.label_names)

    def _global(self, version: int) -> np.ndarray:
        if version not in self._globals:
            assert self.info is not None
            payload = self.link.download(self.info.job_id, version)
            self._globals = {version: decode_vector(payload, self._learner().vector_size)}
        return self._globals[version]

    def handle(self, task: Task) -> None:
        """Carry out one task."""
        if task.kind is TaskKind.EVALUATE:
            self._evaluate(task.global_version)
        elif task.kind is TaskKind.TRAIN:
            self._train(task)

    def _evaluate(self, version: int) -> None:
        assert self.info is not None
        learner = self._learner()
        start = time.perf_counter()
        metrics = learner.evaluate(self._global(version), self.site.test, self._labels("test"))
        metrics["eval_seconds"] = time.perf_counter() - start
        metrics.update(learner.usage())
        metrics["peak_rss_mb"] = peak_rss_mb()
        self.link.report(self.info.job_id, version, metrics, len(self.site.test))
        self.log.info("evaluated", version=version, accuracy=round(metrics.get("accuracy", float("nan")), 4))

    def _train(self, task: Task) -> None:
        assert self.info is not None and self.config is not None
        learner = self._learner()
        start_vector = self._global(task.global_version)
        seed = zlib.crc32(f"{self.config.job.seed}:{self.info.participant_id}:{task.round}".encode())
        began = time.perf_counter()
        bar = self.progress(f"round {task.round}") if self.progress else None
        local, result = learner.train(start_vector, self.site.train, self._labels("train"), seed, bar)
        delta = local - start_vector
        if self.state_dir is not None:
            outbox = self.state_dir / "updates"
            outbox.mkdir(parents=True, exist_ok=True)
            np.save(outbox / f"round-{task.round:04d}.npy", delta)
        payload = Payload(self.info.job_id, task.round, FLOAT32, learner.vector_size, encode_vector(delta),
                          num_examples=len(self.site.train))
        self.link.upload(payload)
        self.log.info("update submitted", round=task.round, steps=result.steps, loss=round(result.loss, 4),
                      seconds=round(time.perf_counter() - began, 1))

    def run(self, poll_s: float = 10.0) -> None:
        """Join, then work until the coordinator says the job is done."""
        if self.info is None:
            self.join()
        assert self.info is not None
        while True:
            task = self.link.get_task(self.info.job_id, poll_s)
            if task.kind is TaskKind.DONE:
                self.log.info("job finished", reason=task.reason)
                return
            try:
                self.handle(task)
            except (PreconditionFailed, PermissionDenied, DuplicateUpdate) as exc:
                # The job moved on while we worked (deadline passed, round closed, deselected): not fatal.
                self.log.warning("task abandoned", kind=task.kind.value, round=task.round, reason=str(exc))
