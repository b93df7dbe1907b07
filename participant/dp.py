"""Differential privacy at a participant: record-level DP-SGD with Opacus, and the participant-level noise share.

Record level (protects each training example of this site): DP-SGD (Abadi et al., "Deep Learning with
Differential Privacy", CCS 2016) with Poisson sampling (Opacus's ``UniformWithReplacementSampler``),
per-example gradients for the trainable prompt modules only (Opacus's ``GradSampleModule`` skips the frozen
PLM, so it costs nothing there), clipping and Gaussian noise (Opacus's ``DPOptimizer``), and the shared
accountant of ``fedprompt.privacy`` (RDP or PRV, ``dp.accountant``) stepped by a hook on the optimizer, as
``PrivacyEngine`` attaches its own.  The accountant's ``state_dict`` is written to the site's state directory
after every round, before the update leaves the site, so epsilon survives restarts and a crash can only
over-count.  A round that would take epsilon past the job's budget is refused.

Participant level (protects a whole site's contribution): the update is clipped to L2 norm C and carries a
share N(0, sigma^2 C^2 / m) of Gaussian noise, m = ``job.min_participants``; the coordinator aggregates only
with at least m updates, so the (possibly encrypted) sum carries at least N(0, sigma^2 C^2) without any
party seeing the noise-free sum (distributed DP, as in DP-FedAvg: McMahan et al., "Learning Differentially
Private Recurrent Language Models", ICLR 2018).

All DP randomness (Poisson sampling, gradient noise, noise shares) comes from OS entropy, never from the
job seed: noise anyone can regenerate protects nothing.
"""

from __future__ import annotations

import math
import os
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.utils.uniform_sampler import UniformWithReplacementSampler

from fedprompt.config import DPSection, JobConfig, TrainSection
from fedprompt.data.datasets import Example
from fedprompt.errors import ConfigError, FedPromptError
from fedprompt.models.classifier import AdaptedModel
from fedprompt.participant.learner import Learner
from fedprompt.participant.train import ProgressFn, TrainResult, backward_in_parts, local_model, steps_per_round
from fedprompt.privacy import calibrate_noise, create_accountant
from fedprompt.protocol import PrivacyReport, checked_job_id

log = structlog.get_logger("participant.dp")

def ledger_path(state_dir: Path, job_id: str) -> Path:
    """Where a site keeps a job's record-level accountant (its privacy ledger) in its state directory."""
    return state_dir / "dp" / f"{checked_job_id(job_id, 'privacy ledger')}.json"


class RecordAccountant:
    """A record-level accountant whose ``state_dict`` lives in a JSON file (``None``: in memory only)."""

    def __init__(self, mechanism: str, path: Path | None) -> None:
        self.path = path
        self.accountant = create_accountant(mechanism)
        if path is not None and path.exists():
            try:
                self.accountant.load_json(path.read_text(encoding="utf-8"))
            except (FedPromptError, UnicodeDecodeError) as exc:
                # Fail closed: an unreadable ledger must not silently restart at epsilon = 0.
                raise FedPromptError(f"privacy ledger {path} is unreadable ({exc}); refusing to train") from exc

    def epsilon(self, delta: float) -> float:
        return self.accountant.get_epsilon(delta)

    def save(self) -> None:
        """Write the state atomically (temp file + rename) so a crash never leaves a torn ledger."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(self.accountant.to_json(), encoding="utf-8")
        os.replace(tmp, self.path)


@dataclass(frozen=True)
class RecordPlan:
    """One site's DP-SGD parameters for a job, fixed at join from the job config and the local data size."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    expected_batch_size: int
    steps_per_round: int
    delta: float
    budget: float
    accountant: str


def plan_record_dp(dp: DPSection, train: TrainSection, rounds: int, num_examples: int) -> RecordPlan:
    """Sampling rate batch/n, delta (default 1/(10 n)), and the noise multiplier: given, or calibrated so that
    ``rounds`` rounds of local steps spend exactly the budget (a site selected in every round)."""
    if num_examples < 1:
        raise ConfigError("dp: a site needs at least one training example")
    sample_rate = min(1.0, train.batch_size / num_examples)
    delta = dp.delta or 1.0 / (10 * num_examples)
    steps = steps_per_round(num_examples, train)
    sigma = dp.noise_multiplier
    if sigma == 0:
        sigma = calibrate_noise(target_epsilon=dp.epsilon, target_delta=delta, sample_rate=sample_rate,
                                steps=rounds * steps, mechanism=dp.accountant, key="dp.epsilon")
    return RecordPlan(sigma, dp.max_grad_norm, sample_rate, max(1, round(sample_rate * num_examples)), steps, delta,
                      dp.epsilon, dp.accountant)


def clip_part(optimiser: DPOptimizer) -> None:
    """Clip one pass's per-example gradients into the batch's sum and free them, so a Poisson batch computed
    in passes holds the per-example gradients of one pass (``train.physical_batch_size``), not of the whole
    batch: Opacus's skipped step (the step ``BatchMemoryManager`` takes between its physical batches) clips and
    accumulates without noise, without a parameter update and without stepping the accountant.  Clipping is per
    example, so the sum is the same as the whole batch's."""
    optimiser.signal_skip_step(do_skip=True)
    optimiser.step()
    optimiser.zero_grad(set_to_none=True)


def train_local_dp(
    model: AdaptedModel,
    examples: list[Example],
    labels: list[int],
    config: TrainSection,
    plan: RecordPlan,
    accountant: RecordAccountant,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """DP-SGD (with Adam as the base optimizer) on the trainable parameters for ``plan.steps_per_round`` steps.

    Each step samples every example independently with probability ``plan.sample_rate``; an empty sample
    still takes a (noise-only) step, as the sampled Gaussian mechanism requires.
    """
    params = model.trainable_parameters()
    wrapped = GradSampleModule(model, loss_reduction="sum")  # summed losses: per-example gradients are exact per pass
    noise = torch.Generator(device=model.device).manual_seed(secrets.randbits(63))  # noise is drawn beside the params
    optimiser = DPOptimizer(torch.optim.Adam(params, lr=config.lr), noise_multiplier=plan.noise_multiplier,
                            max_grad_norm=plan.max_grad_norm, expected_batch_size=plan.expected_batch_size,
                            generator=noise)
    optimiser.attach_step_hook(accountant.accountant.get_optimizer_hook_fn(plan.sample_rate))
    sampler = UniformWithReplacementSampler(num_samples=len(examples), sample_rate=plan.sample_rate,
                                            generator=torch.Generator().manual_seed(secrets.randbits(63)),
                                            steps=plan.steps_per_round)
    y = torch.tensor(labels)
    losses: list[float] = []
    used = 0
    wrapped.train()
    try:
        with warnings.catch_warnings():
            # The prompt's embedding takes integer positions, so its full backward hook fires on outputs: expected.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            for step, indices in enumerate(sampler, start=1):
                optimiser.zero_grad(set_to_none=True)
                if indices:
                    losses.append(backward_in_parts(model, wrapped, examples, y, indices, config.physical_batch_size,
                                                    scale=1.0, between=lambda: clip_part(optimiser)))
                    used += len(indices)
                else:
                    for p in params:
                        p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)  # type: ignore[attr-defined]
                optimiser.step()
                if progress is not None:
                    progress(step, plan.steps_per_round, losses[-1] if losses else float("nan"))
    finally:
        optimiser.zero_grad(set_to_none=True)
        wrapped._close()
        model.eval()
    return TrainResult(plan.steps_per_round, used, float(np.mean(losses)) if losses else float("nan"))


def noise_share(delta: np.ndarray, clip: float, noise_multiplier: float, shares: int,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """Clip ``delta`` to L2 norm ``clip`` and add N(0, noise_multiplier^2 clip^2 / shares) per coordinate.

    ``shares`` such updates summed carry N(0, noise_multiplier^2 clip^2): the participant-level Gaussian
    mechanism with sensitivity ``clip``, though no single party ever holds the full noise.
    """
    if shares < 1:
        raise ConfigError(f"job.min_participants: noise shares need at least one participant, got {shares}")
    generator = rng if rng is not None else np.random.default_rng()
    vector = delta.astype(np.float64)
    norm = float(np.linalg.norm(vector))
    if norm > clip:
        vector *= clip / norm
    std = noise_multiplier * clip / math.sqrt(shares)
    return (vector + generator.normal(0.0, std, size=vector.shape)).astype(np.float32)


class SitePrivacy:
    """A site's privacy state for one job: the DP-SGD plan, the persistent accountant, the noise share."""

    def __init__(self, config: JobConfig, num_examples: int, ledger: Path | None) -> None:
        self.dp = config.dp
        self.train_config = config.train
        self.min_shares = config.job.min_participants
        self.plan = plan_record_dp(config.dp, config.train, config.job.rounds, num_examples)
        self.accountant = RecordAccountant(config.dp.accountant, ledger)
        log.info("record-level DP planned", noise_multiplier=round(self.plan.noise_multiplier, 4),
                 sample_rate=round(self.plan.sample_rate, 5), steps_per_round=self.plan.steps_per_round,
                 delta=self.plan.delta, budget=self.plan.budget, spent=round(self.epsilon(), 4))

    def epsilon(self) -> float:
        return self.accountant.epsilon(self.plan.delta)

    def refusal(self) -> str:
        """Why this site must not train another round (empty: it may)."""
        after = self.accountant.accountant.epsilon_after(self.plan.steps_per_round,
                                                         noise_multiplier=self.plan.noise_multiplier,
                                                         sample_rate=self.plan.sample_rate, delta=self.plan.delta)
        if after > self.plan.budget:
            return (f"record-level privacy budget: another round would spend epsilon {after:.3f} > budget "
                    f"{self.plan.budget:g} at delta {self.plan.delta:.3g} (spent {self.epsilon():.3f})")
        return ""

    def train(self, learner: Learner, start: np.ndarray, examples: list[Example], labels: list[int],
              progress: ProgressFn | None = None) -> tuple[np.ndarray, TrainResult]:
        """One round of DP-SGD from ``start`` on the learner's model (DP-SGD needs per-example gradients, so a
        gradient learner); the spent budget is saved before anything leaves the site."""
        model = local_model(learner, "dp.enabled")
        model.set_vector(start)
        try:
            result = train_local_dp(model, examples, labels, self.train_config, self.plan, self.accountant, progress)
        finally:
            self.accountant.save()
        return model.get_vector(), result

    def share(self, delta: np.ndarray) -> np.ndarray:
        """The update as it may leave the site: clipped plus a noise share when participant-level DP is on."""
        if not self.dp.participant_level:
            return delta
        return noise_share(delta, self.dp.update_clip, self.dp.participant_noise_multiplier, self.min_shares)

    def report(self, job_id: str, round_: int, declined: str = "") -> PrivacyReport:
        return PrivacyReport(job_id, round_, self.epsilon(), self.plan.delta, bool(declined), declined)
