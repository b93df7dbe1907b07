"""A participant's work, independent of transport: join, then evaluate / train on each task it is given.

Only the exchanged vector leaves the site: the initial vector (first member only), one delta per round,
evaluation metrics and, with differential privacy on, the record-level epsilon spent (with ``[augment]`` on, also the count and time of the round's pseudo-labelling,
reported with the evaluation of the version that round produced).  FedAvg weights stay the labelled
counts: pseudo-labels add training signal, not weight.  Every submitted delta is also kept in the site's
state directory, an audit trail of exactly what left the institution; the privacy accountant lives there
too (``dp/<job_id>.json``), so a restart never resets epsilon.  Since the coordinator chooses that id, a site
checks it (``fedprompt.protocol.checked_job_id``) before anything is written, and refuses a job whose id could
name a file outside its state directory.

What leaves and how global versions are read back is the job's codec (``participant.codec``), chosen once
at join: plain float32, or in encrypted jobs (``he.enabled``) the encryption of ``n_i * delta_i`` and of
the weight ``n_i``, with the global prompt rebuilt here from the encrypted initial prompt and each round's
encrypted aggregate and written to the state directory (``globals/version-NNNN.npy`` and
``prompt-latest.safetensors``), since the coordinator never holds it.

In a threshold job (``he.mode = "threshold"``) the site holds a share of the key (``participant.threshold_keys``),
sets it up with the other members through the coordinator's relay, uploads for the task's round attempt, and
answers SHARE tasks with a decryption share; it provides the initial vector once the key setup is done.

With a Gram defence a key holder may be given a DECRYPT task: decrypt the round's packed Gram ciphertext and
return only its scalars (``crypto.gram.decrypt_gram``).

How the vector is learned is the ``Learner``'s business: a local PLM copy with gradients
(``participant.train.GradientLearner``, optionally under DP-SGD), or a black-box search that only queries a
model service (``participant.blackbox``; then this process never imports torch, so the DP module is imported
only by jobs that use it).

With ``[levels]`` the vector that leaves is the global and expert levels only, as a level container; the
personal level is trained here and never sent (``participant.levels`` keeps it).
"""

from __future__ import annotations

import json
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import structlog

from fedprompt.config import JobConfig, check_job_config, parse_toml
from fedprompt.crypto.attest import KeyCredentials
from fedprompt.crypto.errors import AttestationError
from fedprompt.crypto.gram import decrypt_gram
from fedprompt.data.datasets import Example, task_labels
from fedprompt.data.shards import SiteData
from fedprompt.errors import (
    DuplicateUpdate,
    FedPromptError,
    InvalidRequest,
    PermissionDenied,
    PreconditionFailed,
    RelayRefused,
    clip,
)
from fedprompt.locations import LATEST_PROMPT
from fedprompt.participant.codec import PayloadCodec, job_codec
from fedprompt.participant.fewshot import PseudoLabeller
from fedprompt.participant.keys import MAX_FAULT_BYTES, KeyHolder
from fedprompt.participant.learner import Learner, ProgressFn, peak_rss_mb
from fedprompt.participant.levels import SiteLevels
from fedprompt.participant.threshold_gramkeys import GramKeys
from fedprompt.participant.threshold_keys import ThresholdKeys
from fedprompt.promptfile import save_prompt
from fedprompt.protocol import CoordinatorLink, JobDescription, JoinInfo, Task, TaskKind, checked_job_id
from fedprompt.wire.bundle import unpack_bundle
from fedprompt.wire.threshold import unpack_version
from fedprompt.wire.threshold_gram import GramRequest, unpack_request

if TYPE_CHECKING:
    from fedprompt.participant.dp import SitePrivacy

#: What the evaluation log line shows: a classification job's accuracy, a generation job's ROUGE-L, and the loss.
SHOWN_METRICS = ("accuracy", "rouge_l", "loss")

log = structlog.get_logger("participant.runtime")

LearnerFactory = Callable[[JobConfig], Learner]

# What the coordinator answers to a task it no longer wants (round closed or restarted, not selected after
# all, update already in): the participant drops the task and asks for the next one.
ROUND_MOVED_ON = (PreconditionFailed, PermissionDenied, DuplicateUpdate)


class SiteBehaviour:
    """What a site trains on and what it sends: honest (both identity) unless a simulation says otherwise.

    The attack simulator (``participant.attacks``) overrides both hooks; only a simulation config can choose
    it, never anything the coordinator sends.
    """

    def training_examples(self, examples: list[Example]) -> list[Example]:
        return examples

    def outgoing_delta(self, delta: np.ndarray, round_: int) -> np.ndarray:
        return delta


class TrainingEvents:
    """What a site's rounds tell an observer (``participant.metrics`` for the daemon's endpoint); ignored here."""

    def trained(self, seconds: float, epsilon: float | None) -> None:
        """A round's local training took ``seconds``; ``epsilon``: record-level spent so far (None without DP)."""

    def sent(self, num_bytes: int) -> None:
        """An update of ``num_bytes`` reached the coordinator."""


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
        behaviour: SiteBehaviour | None = None,
        events: TrainingEvents | None = None,
        credentials: KeyCredentials | None = None,
    ) -> None:
        """``credentials``: the site's mTLS identity, to attest and verify encrypted jobs' keys (``participant.keys``)."""
        self.link = link
        self.credentials = credentials
        self.events = events or TrainingEvents()
        self.site = site
        self.job_ref = job_ref
        self.learner_factory = learner_factory
        self.state_dir = state_dir
        self.progress = progress
        self.behaviour = behaviour or SiteBehaviour()
        self.info: JoinInfo | None = None
        self.config: JobConfig | None = None
        self.config_toml = ""
        self.learner: Learner | None = None
        self.privacy: SitePrivacy | None = None
        self.augmenter: PseudoLabeller | None = None
        self._train_metrics: dict[str, float] = {}
        self.keys: KeyHolder | None = None
        self.threshold: ThresholdKeys | None = None  # a threshold job's key share (``participant.threshold_keys``)
        self.gram: GramKeys | None = None  # and its Gram evaluation keys, under a Gram defence
        self._initial_due = False
        self.levels: SiteLevels | None = None
        self.codec: PayloadCodec | None = None
        self.log = log
        self.stop = threading.Event()  # set by the daemon's SIGTERM handler; checked between tasks
        self.busy = False  # a task is in hand (a stop then waits for it to finish)

    def join(self) -> JoinInfo:
        """Learn the job's config, build its learner, join, and provide the initial vector if asked to.

        The job id the coordinator gives names files in the state directory, so a hostile one is refused here,
        before the site writes anything."""
        description = self.link.describe(self.job_ref)
        checked_job_id(description.job_id, "job id from the coordinator")
        self.config = parse_toml(description.config_toml, JobConfig, "job config from coordinator")
        self.config_toml = description.config_toml
        self._check_signed(description)
        self._labels("train")  # refuse to join with data whose labels the job does not know
        learner = self.learner_factory(self.config)
        self.learner = learner
        if self.config.he.enabled:
            self.keys = KeyHolder(self.link, self.config.he_params(description.gram_defence), description.job_id,
                                  self.state_dir, self.credentials)
        if self.config.dp.enabled:  # config validation keeps DP to gradient jobs
            from fedprompt.participant.dp import SitePrivacy, ledger_path

            ledger = ledger_path(self.state_dir, description.job_id) if self.state_dir is not None else None
            self.privacy = SitePrivacy(self.config, len(self.site.train), ledger)
        info = self._join_request(description.job_id)
        self.info = info
        self.log = log.bind(job_id=info.job_id, participant=info.participant_id)
        if self.config.levels.enabled:
            self.levels = SiteLevels(learner, self.config.levels.expert_tokens, info.job_id, self.state_dir)
        if self.config.he.threshold_mode and self.keys is not None:
            members = self.config.job.allowed_participants  # a threshold job names them (config validation)
            self.threshold = ThresholdKeys(info.job_id, members, info.participant_id,
                                           self.config.he.threshold_params(len(members), description.gram_defence),
                                           self.keys.exchange, self.state_dir, self.credentials,
                                           self.config.job.min_participants)
            self.gram = GramKeys(self.threshold) if description.gram_defence else None
        codec = job_codec(description.gram_defence, info.job_id, learner.vector_size, self.keys,
                          self.levels.sizes if self.levels is not None else None,
                          lambda version: self.link.download(info.job_id, version), self._keep_global,
                          (self._threshold, self.config.summand_weight) if self.threshold is not None else None,
                          (self._gram, self.config.he.gram_norm_bound) if self.gram is not None else None)
        self.codec = codec
        if self.config.augment.enabled:
            self.augmenter = PseudoLabeller(self.config.augment, self.site.unlabelled, self.config.task.label_names,
                                            f"{self.config.job.seed}:{info.participant_id}", self.site.unlabelled_gold)
        if self.keys is not None:
            self.keys.joined(info.participant_id, info.deal_keys)
        self._initial_due = info.provide_initial_prompt
        self._provide_initial()
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            (self.state_dir / "participant.json").write_text(json.dumps(
                {"job_id": info.job_id, "participant_id": info.participant_id}), encoding="utf-8")
        return info

    def _check_signed(self, description: JobDescription) -> None:
        """Trust the relayed config only as its admin signed it (``config.signed``; ``RelayRefused``, naming why,
        if not: the site does not join, and its daemon exits with that one line)."""
        assert self.config is not None
        trust = self.credentials.trust if self.credentials is not None else None
        admin = check_job_config(trust, description.config_signature, description.config_toml, self.config,
                                 description.crl)
        if admin:
            self.log.info("job config signed by its admin", job_id=description.job_id, admin=admin)

    def _join_request(self, job_id: str) -> JoinInfo:
        """Join (or re-join) with this site's counts, prompt size and, for encrypted jobs, its exchange key; the
        answer must be about the job asked for (its id is the one checked at ``join``)."""
        info = self.link.join(job_id, len(self.site.train), len(self.site.test), self._learner().vector_size,
                              self.keys.public_key if self.keys is not None else b"",
                              self.keys.attestation() if self.keys is not None else b"")
        if info.job_id != job_id:
            raise InvalidRequest(f"coordinator: asked to join job {job_id!r}, answered for job {info.job_id[:80]!r}")
        return info

    def _learner(self) -> Learner:
        if self.learner is None:
            raise FedPromptError("join the job before working on it")
        return self.learner

    def _labels(self, which: str) -> list[int]:
        assert self.config is not None
        return task_labels(getattr(self.site, which), self.config.task)

    def _codec(self) -> PayloadCodec:
        if self.codec is None:
            raise FedPromptError("join the job before working on it")
        return self.codec

    def service_keys(self) -> None:
        """Encrypted jobs: pick up the job key when it arrives, and share it with members that lack it (threshold
        jobs: one step of the members' key setup); then provide the initial vector if asked and able to."""
        if self.threshold is not None:
            if not self.threshold.ready:
                self._threshold_refresh(self.threshold)
            if self.gram is not None and self.threshold.ready:
                self._threshold_refresh(self.gram)
        elif self.keys is not None and self.info is not None:
            self.keys.refresh()
        self._provide_initial()

    def _provide_initial(self) -> None:
        """Upload the initial vector if this site was asked to; a threshold job's waits for the key setup."""
        if self._initial_due and (self.threshold is None or self.threshold.ready):
            codec, learner = self._codec(), self._learner()
            self.link.upload(codec.initial(learner.initial_vector()))
            self._initial_due = False
            self.log.info("initial vector provided", vector_size=learner.vector_size, encoding=codec.encoding)

    def _threshold_refresh(self, keys: ThresholdKeys | GramKeys) -> None:
        """One look at the threshold (or Gram key) relay; a relayed key that does not verify is reported, raised."""
        try:
            keys.refresh(self.link)
        except AttestationError as exc:
            self._report_refusal(keys.job_id, "relayed threshold key material", exc)
            raise

    def _report_refusal(self, job_id: str, what: str, exc: Exception) -> None:
        """Report a refusal of what the coordinator relayed (the job pauses with the reason); the caller raises."""
        reason = clip(str(exc), MAX_FAULT_BYTES)
        self.log.error(f"{what} refused: reporting it", reason=reason)
        try:
            self.link.report_key_fault(job_id, reason)
        except FedPromptError as failed:  # the refusal stands, reported or not
            self.log.error("the refusal could not be reported", error=clip(str(failed), 300))

    def _threshold(self) -> ThresholdKeys:
        """This member's threshold keys, completed first if the relay is ready before we looked again (the
        coordinator hands out work once every member published and dealt, which may be before our next look)."""
        if self.threshold is not None and not self.threshold.ready:
            self._threshold_refresh(self.threshold)
        if self.threshold is None or not self.threshold.ready:
            raise FedPromptError("the job's threshold key setup has not finished")
        return self.threshold

    def _gram(self) -> GramKeys:
        """This member's Gram evaluation keys, assembled first if the relay completed since we last looked."""
        if self.gram is None or not self._threshold() or not self.gram.refresh(self.link):
            raise FedPromptError("the job's Gram evaluation keys are not assembled yet")
        return self.gram

    def global_vector(self, version: int) -> np.ndarray:
        """Global ``version`` as this site knows it (downloaded, or decrypted and rebuilt in encrypted jobs)."""
        return self._codec().global_vector(version)

    def _keep_global(self, version: int, vector: np.ndarray) -> None:
        """Keep a global version rebuilt here (encrypted jobs: the coordinator never holds it)."""
        if self.state_dir is not None:
            assert self.info is not None
            (self.state_dir / "globals").mkdir(parents=True, exist_ok=True)
            np.save(self.state_dir / "globals" / f"version-{version:04d}.npy", vector)
            save_prompt(self.state_dir / LATEST_PROMPT, vector, self.config_toml, version,
                        self.info.job_id)

    def handle(self, task: Task) -> None:
        """Carry out one task."""
        if task.kind is TaskKind.EVALUATE:
            self._evaluate(task.global_version)
        elif task.kind is TaskKind.TRAIN:
            self._train(task)
        elif task.kind is TaskKind.DECRYPT:
            self._decrypt_gram(task)
        elif task.kind is TaskKind.CHECK:
            self._check(task)
        elif task.kind is TaskKind.SHARE:
            self._share(task)

    def _share(self, task: Task) -> None:
        """Threshold jobs: our flooded decryption share of the round attempt's sum, masked for the members (once
        per attempt: ``ThresholdKeys`` refuses a second); in a Gram job, of its Gram matrix or accepted sum."""
        assert self.info is not None and self.config is not None
        data = self.link.decryption(self.info.job_id, task.round).data
        request = unpack_request(data) if self.gram is not None else unpack_version(data, request=True)
        try:
            share = (self._gram().answer(request, self._learner().vector_size, self.config.he.gram_norm_bound)
                     if isinstance(request, GramRequest) else self._threshold().decryption_share(
                         self._learner().vector_size, request.round, request.attempt, request.uploaders,
                         request.decryptors))
        except (RelayRefused, AttestationError) as exc:
            self._report_refusal(self.info.job_id, "a decryption request", exc)
            raise
        self.link.submit_share(self.info.job_id, request.round, request.attempt, share)
        self.log.info("decryption share sent", round=request.round, attempt=request.attempt)

    def _decrypt_gram(self, task: Task) -> None:
        """Decrypt the round's packed Gram ciphertext and return only the Gram scalars."""
        assert self.info is not None and self.keys is not None
        payload = self.link.gram(self.info.job_id, task.round)
        scalars = decrypt_gram(self.keys.require(), payload.data, payload.vector_size)
        self.link.report_gram(self.info.job_id, task.round, scalars.tolist())
        self.log.info("Gram matrix decrypted", round=task.round, updates=payload.vector_size)

    def _check(self, task: Task) -> None:
        """Check a candidate aggregate, or every update of the attempt masked, and report only the verdicts."""
        assert self.info is not None
        bundle = self.link.check_bundle(self.info.job_id, task.round)
        verdicts = [self._codec().check(data, masked) for masked, data in unpack_bundle(bundle.data)]
        self.link.report_check(self.info.job_id, task.round, verdicts)
        self.log.info("round checked", round=task.round, parts=len(verdicts),
                      usable=sum(v.valid for v in verdicts))

    def _evaluate(self, version: int) -> None:
        assert self.info is not None
        learner = self._learner()
        start = time.perf_counter()
        metrics = learner.evaluate(self.global_vector(version), self.site.test, self._labels("test"))
        metrics["eval_seconds"] = time.perf_counter() - start
        metrics.update(self._train_metrics)  # the pseudo-labelling of the round that produced this version
        self._train_metrics = {}
        metrics.update(learner.usage())
        metrics["peak_rss_mb"] = peak_rss_mb()
        self.link.report(self.info.job_id, version, metrics, len(self.site.test))
        self.log.info("evaluated", version=version, **{k: round(metrics[k], 4) for k in SHOWN_METRICS if k in metrics})

    def _train(self, task: Task) -> None:
        assert self.info is not None and self.config is not None
        learner = self._learner()
        start_vector = self.global_vector(task.global_version)
        if self.privacy is not None and (refusal := self.privacy.refusal()):
            self.link.report_privacy(self.privacy.report(self.info.job_id, task.round, refusal))
            self.log.warning("declined to train", round=task.round, reason=refusal)
            return
        began = time.perf_counter()
        bar = self.progress(f"round {task.round}") if self.progress else None
        examples = self.behaviour.training_examples(self.site.train)  # identity unless simulating an attack
        labels = task_labels(examples, self.config.task)
        if self.augmenter is not None and self.augmenter.active(task.round):
            extra, extra_labels, self._train_metrics = self.augmenter.label(
                lambda texts: learner.predict_proba(start_vector, texts), self.site.train, self._labels("train"))
            examples, labels = examples + extra, labels + extra_labels
        epsilon: float | None = None
        if self.privacy is not None:
            local, result = self.privacy.train(learner, start_vector, examples, labels, bar)
            honest = self.privacy.share(local - start_vector)
            report = self.privacy.report(self.info.job_id, task.round)
            self.link.report_privacy(report)
            epsilon = report.epsilon
        else:
            seed = zlib.crc32(f"{self.config.job.seed}:{self.info.participant_id}:{task.round}".encode())
            local, result = learner.train(start_vector, examples, labels, seed, bar)
            honest = local - start_vector
        delta = self.behaviour.outgoing_delta(honest, task.round)  # identity unless simulating an attack
        self.events.trained(time.perf_counter() - began, epsilon)
        if self.levels is not None:
            self.levels.keep_personal()  # the personal prompt stays here, in the model and the state directory
        if self.state_dir is not None:
            outbox = self.state_dir / "updates"
            outbox.mkdir(parents=True, exist_ok=True)
            np.save(outbox / f"round-{task.round:04d}.npy", delta)
        # Participant-level DP needs every update to count once (sensitivity C); under HE the coordinator cannot
        # re-weight ciphertexts, so the site itself sends weight 1.
        weight = 1 if self.config.dp.participant_level else len(self.site.train)
        update = self._codec().encode_update(task.round, delta, weight, task.attempt)
        self.link.upload(update)
        self.events.sent(len(update.data))
        self.log.info("update submitted", round=task.round, steps=result.steps, loss=round(result.loss, 4),
                      seconds=round(time.perf_counter() - began, 1))

    def run(self, poll_s: float = 10.0) -> None:
        """Join, then work until the coordinator says the job is done or ``stop`` is set.

        A task the coordinator no longer wants (the round closed, was restarted without us, or already has
        our update) is dropped and the next task fetched: that is how a daemon resumes where the job is
        after a coordinator restart.  A coordinator that does not know us (state restored from an older
        backup) is joined again, once.
        """
        if self.info is None:
            self.join()
        assert self.info is not None
        rejoined = False
        while not self.stop.is_set():
            self.service_keys()
            waiting_for_key = (not self.threshold.ready or (self.gram is not None and self.gram.evaluator is None)
                               if self.threshold is not None
                               else self.keys is not None and self.keys.secret is None)
            try:
                task = self.link.get_task(self.info.job_id, 1.0 if waiting_for_key else poll_s)
            except PermissionDenied:
                if rejoined:
                    raise
                self.log.warning("coordinator does not know this member: joining again")
                self.info = self._join_request(self.info.job_id)
                rejoined = True
                continue
            rejoined = False
            if task.kind is TaskKind.DONE:
                self.log.info("job finished", reason=task.reason)
                return
            self.busy = True
            try:
                self.handle(task)
            except ROUND_MOVED_ON as exc:
                self.log.warning("task dropped: the round moved on", task=task.kind.value, round=task.round,
                                 reason=str(exc))
            finally:
                self.busy = False
        self.log.info("participant stopped between tasks")
