"""Local gradient training of the soft prompt (the PLM stays frozen) and local evaluation."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from fedprompt.config import TrainSection
from fedprompt.data.datasets import Example
from fedprompt.models.classifier import PromptClassifier
from participant.learner import ProgressFn, TrainResult, label_metrics


def train_local(
    model: PromptClassifier,
    examples: list[Example],
    labels: list[int],
    config: TrainSection,
    seed: int,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Adam on the exchanged parameters for ``local_epochs`` (capped at ``max_steps``); returns the mean loss.

    Optimiser state starts fresh each round: only the prompt crosses the network, so momentum cannot be
    shared, and starting fresh keeps every round a pure function of the global prompt and the local data.
    """
    if not examples:
        return TrainResult(0, 0, float("nan"))
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.exchanged_parameters(), lr=config.lr)
    per_epoch = math.ceil(len(examples) / config.batch_size)
    total = per_epoch * config.local_epochs
    total = min(total, config.max_steps) if config.max_steps else total
    y = torch.tensor(labels)
    losses: list[float] = []
    step = 0
    model.train()
    while step < total:
        order = torch.randperm(len(examples), generator=generator)
        for start in range(0, len(examples), config.batch_size):
            if step >= total:
                break
            idx = order[start : start + config.batch_size]
            batch = model.tokenize([examples[int(i)].text for i in idx])
            loss = F.cross_entropy(model(**batch), y[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
            step += 1
            if progress is not None:
                progress(step, total, losses[-1])
    model.eval()
    used = min(len(examples), total * config.batch_size)
    return TrainResult(step, used, float(np.mean(losses)))


def evaluate(model: PromptClassifier, examples: list[Example], labels: list[int], batch_size: int = 64) -> dict[str, float]:
    """Accuracy and mean cross-entropy on labelled examples."""
    if not examples:
        return {}
    probs = model.predict_proba([e.text for e in examples], batch_size)
    return label_metrics(np.log(np.clip(probs, 1e-12, 1.0)), labels)


class GradientLearner:
    """The ``Learner`` of gradient prompt tuning: Adam on the exchanged parameters of a local PLM copy."""

    def __init__(self, model: PromptClassifier, config: TrainSection) -> None:
        self.model = model
        self.config = config

    @property
    def vector_size(self) -> int:
        return self.model.vector_size

    def initial_vector(self) -> np.ndarray:
        return self.model.get_vector()

    def train(self, start: np.ndarray, examples: list[Example], labels: list[int], seed: int,
              progress: ProgressFn | None = None) -> tuple[np.ndarray, TrainResult]:
        self.model.set_vector(start)
        result = train_local(self.model, examples, labels, self.config, seed, progress)
        return self.model.get_vector(), result

    def evaluate(self, vector: np.ndarray, examples: list[Example], labels: list[int]) -> dict[str, float]:
        self.model.set_vector(vector)
        return evaluate(self.model, examples, labels)

    def usage(self) -> dict[str, float]:
        return {}
