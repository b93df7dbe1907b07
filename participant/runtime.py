"""A participant's work, independent of transport: join, then evaluate / train on each task it is given.

Only the prompt-sized vector leaves the site: the initial prompt (first member only), one delta per round,
and evaluation metrics.  Every submitted delta is also kept in the site's state directory, an audit trail of
exactly what left the institution.
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
from fedprompt.data.datasets import Example, label_indices
from fedprompt.data.shards import SiteData
from fedprompt.errors import FedPromptError
from fedprompt.models.classifier import PromptClassifier
from fedprompt.payload import FLOAT32, decode_vector, encode_vector
from fedprompt.protocol import JoinInfo, Payload, Task, TaskKind
from participant.link import CoordinatorLink
from participant.train import ProgressFn, Trainer, evaluate, train_local

log = structlog.get_logger("participant.runtime")

ModelFactory = Callable[[JobConfig], PromptClassifier]


class SiteBehaviour:
    """What a site trains on and what it sends: honest (both identity) unless a simulation says otherwise.

    The attack simulator (``participant.attacks``) overrides both hooks; only a simulation config can choose
    it, never anything the coordinator sends.
    """

    def training_examples(self, examples: list[Example]) -> list[Example]:
        return examples

    def outgoing_delta(self, delta: np.ndarray, round_: int) -> np.ndarray:
        return delta


class ParticipantRuntime:
    """Runs one site's side of a job against any ``CoordinatorLink``."""

    def __init__(
        self,
        link: CoordinatorLink,
        site: SiteData,
        job_ref: str,
        model_factory: ModelFactory,
        state_dir: Path | None = None,
        progress: Callable[[str], ProgressFn | None] | None = None,
        behaviour: SiteBehaviour | None = None,
        trainer: Trainer = train_local,
    ) -> None:
        self.link = link
        self.site = site
        self.job_ref = job_ref
        self.model_factory = model_factory
        self.state_dir = state_dir
        self.progress = progress
        self.behaviour = behaviour or SiteBehaviour()
        self.trainer = trainer
        self.info: JoinInfo | None = None
        self.config: JobConfig | None = None
        self.model: PromptClassifier | None = None
        self._globals: dict[int, np.ndarray] = {}
        self.log = log

    def join(self) -> JoinInfo:
        """Learn the job's config, build its model, join, and provide the initial prompt if asked to."""
        description = self.link.describe(self.job_ref)
        self.config = parse_toml(description.config_toml, JobConfig, "job config from coordinator")
        model = self.model_factory(self.config)
        self.model = model
        self._labels("train")  # refuse to join with data whose labels the job does not know
        info = self.link.join(description.job_id, len(self.site.train), len(self.site.test), model.vector_size)
        self.info = info
        self.log = log.bind(job_id=info.job_id, participant=info.participant_id)
        if info.provide_initial_prompt:
            self.link.upload(Payload(info.job_id, 0, FLOAT32, model.vector_size, encode_vector(model.get_vector())))
            self.log.info("initial prompt provided", vector_size=model.vector_size)
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            (self.state_dir / "participant.json").write_text(json.dumps(
                {"job_id": info.job_id, "participant_id": info.participant_id}), encoding="utf-8")
        return info

    def _model(self) -> PromptClassifier:
        if self.model is None:
            raise FedPromptError("join the job before working on it")
        return self.model

    def _labels(self, which: str) -> list[int]:
        assert self.config is not None
        return label_indices(getattr(self.site, which), self.config.task.label_names)

    def _global(self, version: int) -> np.ndarray:
        if version not in self._globals:
            assert self.info is not None
            payload = self.link.download(self.info.job_id, version)
            self._globals = {version: decode_vector(payload, self._model().vector_size)}
        return self._globals[version]

    def handle(self, task: Task) -> None:
        """Carry out one task."""
        if task.kind is TaskKind.EVALUATE:
            self._evaluate(task.global_version)
        elif task.kind is TaskKind.TRAIN:
            self._train(task)

    def _evaluate(self, version: int) -> None:
        assert self.info is not None
        model = self._model()
        model.set_vector(self._global(version))
        start = time.perf_counter()
        metrics = evaluate(model, self.site.test, self._labels("test"))
        metrics["eval_seconds"] = time.perf_counter() - start
        self.link.report(self.info.job_id, version, metrics, len(self.site.test))
        self.log.info("evaluated", version=version, accuracy=round(metrics.get("accuracy", float("nan")), 4))

    def _train(self, task: Task) -> None:
        assert self.info is not None and self.config is not None
        model = self._model()
        start_vector = self._global(task.global_version)
        model.set_vector(start_vector)
        seed = zlib.crc32(f"{self.config.job.seed}:{self.info.participant_id}:{task.round}".encode())
        began = time.perf_counter()
        bar = self.progress(f"round {task.round}") if self.progress else None
        examples = self.behaviour.training_examples(self.site.train)
        labels = label_indices(examples, self.config.task.label_names)
        result = self.trainer(model, examples, labels, self.config.train, seed, bar)
        delta = self.behaviour.outgoing_delta(model.get_vector() - start_vector, task.round)
        if self.state_dir is not None:
            outbox = self.state_dir / "updates"
            outbox.mkdir(parents=True, exist_ok=True)
            np.save(outbox / f"round-{task.round:04d}.npy", delta)
        payload = Payload(self.info.job_id, task.round, FLOAT32, model.vector_size, encode_vector(delta),
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
            self.handle(task)
