"""Local gradient training of the soft prompt (the PLM stays frozen) and local evaluation."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import numpy as np
import torch

from fedprompt.config import TrainSection
from fedprompt.data.datasets import Example
from fedprompt.errors import ConfigError
from fedprompt.models.classifier import AdaptedModel, PromptClassifier
from fedprompt.models.generator import PromptGenerator
from fedprompt.participant.learner import Learner, ProgressFn, TrainResult, label_metrics


def steps_per_round(num_examples: int, config: TrainSection) -> int:
    """Local optimiser steps in one round: ``local_epochs`` passes over the data, capped at ``max_steps``."""
    total = math.ceil(num_examples / config.batch_size) * config.local_epochs
    return min(total, config.max_steps) if config.max_steps else total


Trainer = Callable[[AdaptedModel, list[Example], list[int], TrainSection, int, ProgressFn | None], TrainResult]


def train_local(
    model: AdaptedModel,
    examples: list[Example],
    labels: list[int],
    config: TrainSection,
    seed: int,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Adam on the trainable parameters (exchanged + personal) for ``local_epochs`` (capped at ``max_steps``); returns the mean loss.

    Optimiser state starts fresh each round: only the prompt crosses the network, so momentum cannot be
    shared, and starting fresh keeps every round a pure function of the global prompt and the local data.
    Dropout draws from torch's global generator, so it is forked and seeded for the round too: without that a
    round would depend on whatever ran before it in the process (measured: identical plaintext runs, and
    plaintext vs CKKS runs, drifted apart from round 1).
    """
    if not examples:
        return TrainResult(0, 0, float("nan"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _adam_steps(model, examples, labels, config, seed, progress)


def _adam_steps(model: AdaptedModel, examples: list[Example], labels: list[int], config: TrainSection,
                seed: int, progress: ProgressFn | None) -> TrainResult:
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.trainable_parameters(), lr=config.lr)
    total = steps_per_round(len(examples), config)
    y = torch.tensor(labels)
    losses: list[float] = []
    step = 0
    model.train()
    while step < total:
        order = torch.randperm(len(examples), generator=generator)
        for start in range(0, len(examples), config.batch_size):
            if step >= total:
                break
            idx = order[start : start + config.batch_size].tolist()
            optimiser.zero_grad(set_to_none=True)
            losses.append(backward_in_parts(model, model, examples, y, idx, config.physical_batch_size,
                                            scale=1.0 / len(idx)))
            optimiser.step()
            step += 1
            if progress is not None:
                progress(step, total, losses[-1])
    model.eval()
    used = min(len(examples), total * config.batch_size)
    return TrainResult(step, used, float(np.mean(losses)))


def backward_in_parts(model: AdaptedModel, forward: Callable[..., torch.Tensor], examples: list[Example],
                      y: torch.Tensor, indices: list[int], physical: int, scale: float,
                      between: Callable[[], None] | None = None) -> float:
    """Backward of ``scale`` x the summed loss (``summed_loss``: a classifier's cross-entropy, a generator's
    per-example completion loss) of ``examples[indices]`` through ``forward`` (the model,
    or Opacus's wrapper of it), in passes of at most ``physical`` examples: one batch's gradient with the
    activation memory of a smaller one.  ``between`` runs after every pass but the last (DP-SGD clips and
    frees each pass's per-example gradients there).  Returns the batch's mean loss."""
    total = 0.0
    for start in range(0, len(indices), physical):
        if start and between is not None:
            between()
        part = indices[start : start + physical]
        loss = model.summed_loss(forward, examples, y, part)
        (loss * scale).backward()
        total += float(loss.detach())
    return total / len(indices)


def memoized(trainer: Trainer) -> Trainer:
    """``trainer`` with results remembered by (start vector, personal level, examples, labels, config, seed).

    Local training is a pure function of those inputs, so experiments that replay the same round from the
    same global prompt (e.g. one scenario under several aggregators) can skip the repeat.
    """
    cache: dict[str, tuple[np.ndarray, np.ndarray, TrainResult]] = {}

    def run(model: AdaptedModel, examples: list[Example], labels: list[int], config: TrainSection, seed: int,
            progress: ProgressFn | None = None) -> TrainResult:
        digest = hashlib.sha256(model.get_vector().tobytes())
        digest.update(model.personal_vector().tobytes())  # a personal prompt level is a start state too
        digest.update(repr((seed, config, labels, [e.text for e in examples])).encode())
        key = digest.hexdigest()
        if key not in cache:
            result = trainer(model, examples, labels, config, seed, progress)
            cache[key] = (model.get_vector(), model.personal_vector(), result)
        vector, personal, result = cache[key]
        model.set_vector(vector)
        model.set_personal_vector(personal)
        return result

    return run


def evaluate(model: AdaptedModel, examples: list[Example], labels: list[int], batch_size: int = 64) -> dict[str, float]:
    """Accuracy and mean cross-entropy on labelled examples; a generator's per-token loss, exact match and ROUGE-L."""
    if not examples:
        return {}
    if isinstance(model, PromptGenerator):
        return model.evaluate(examples)
    assert isinstance(model, PromptClassifier)
    probs = model.predict_proba([e.text for e in examples], batch_size)
    return label_metrics(np.log(np.clip(probs, 1e-12, 1.0)), labels)


def local_model(learner: Learner, feature: str) -> AdaptedModel:
    """The local PLM copy behind ``learner``, for features that need one (DP-SGD, prompt levels); config
    validation refuses them for black-box jobs, so reaching this with another learner is a config error."""
    if not isinstance(learner, GradientLearner):
        raise ConfigError(f"{feature}: needs a gradient learner (a local model copy), not {type(learner).__name__}")
    return learner.model


class GradientLearner:
    """The ``Learner`` of gradient prompt tuning: Adam on the exchanged parameters of a local PLM copy."""

    def __init__(self, model: AdaptedModel, config: TrainSection, trainer: Trainer = train_local) -> None:
        self.model = model
        self.config = config
        self.trainer = trainer

    @property
    def vector_size(self) -> int:
        return self.model.vector_size

    def initial_vector(self) -> np.ndarray:
        return self.model.get_vector()

    def train(self, start: np.ndarray, examples: list[Example], labels: list[int], seed: int,
              progress: ProgressFn | None = None) -> tuple[np.ndarray, TrainResult]:
        self.model.set_vector(start)
        result = self.trainer(self.model, examples, labels, self.config, seed, progress)
        return self.model.get_vector(), result

    def evaluate(self, vector: np.ndarray, examples: list[Example], labels: list[int]) -> dict[str, float]:
        self.model.set_vector(vector)
        return evaluate(self.model, examples, labels)

    def predict_proba(self, vector: np.ndarray, texts: list[str]) -> np.ndarray:
        if not isinstance(self.model, PromptClassifier):
            raise ConfigError("task.kind: a generation job writes completions; it has no label probabilities")
        self.model.set_vector(vector)
        return self.model.predict_proba(texts)

    def usage(self) -> dict[str, float]:
        return {}
