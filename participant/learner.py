"""What a participant's local learner must do, independent of how it learns (torch-free on purpose).

The runtime drives a ``Learner`` with the global vector of a round; gradient prompt tuning
(``participant.train``) and black-box search (``participant.blackbox``) both implement it, so the round
machinery, uploads and reports are the same for both.  This module imports neither torch nor transformers:
the black-box participant must never load them.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from fedprompt.data.datasets import Example

ProgressFn = Callable[[int, int, float], None]


@dataclass(frozen=True)
class TrainResult:
    steps: int
    num_examples: int
    loss: float


class Learner(Protocol):
    """Turns a global vector and local data into a new local vector, and evaluates a vector."""

    @property
    def vector_size(self) -> int:
        """Length of the exchanged vector; every member of a job must agree."""

    def initial_vector(self) -> np.ndarray:
        """The job's version-0 vector (uploaded by the first member)."""

    def train(self, start: np.ndarray, examples: list[Example], labels: list[int], seed: int,
              progress: ProgressFn | None = None) -> tuple[np.ndarray, TrainResult]:
        """Local work for one round from ``start``; returns the new local vector."""

    def evaluate(self, vector: np.ndarray, examples: list[Example], labels: list[int]) -> dict[str, float]:
        """Accuracy and loss of ``vector`` on labelled examples."""

    def predict_proba(self, vector: np.ndarray, texts: list[str]) -> np.ndarray:
        """Label probabilities ``(len(texts), num_labels)`` under ``vector`` (pseudo-labelling, ``predict``)."""

    def usage(self) -> dict[str, float]:
        """Cumulative resource counters to report (e.g. model-service queries); empty if none."""


def peak_rss_mb(pid: int | str = "self") -> float:
    """Peak resident set size of a process in MiB: Linux's ``VmHWM``, which starts afresh at ``exec``.

    (``ru_maxrss`` does not: a child forked from a large parent, e.g. a test runner holding torch, inherits
    the parent's peak.)  Elsewhere, this process's ``ru_maxrss``.
    """
    status = Path(f"/proc/{pid}/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of label logits, stable for large logits."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def label_metrics(logits: np.ndarray, labels: list[int]) -> dict[str, float]:
    """Accuracy and mean cross-entropy from label logits (numerically stable log-softmax)."""
    y = np.asarray(labels)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    nll = -np.clip(log_probs[np.arange(len(y)), y], np.log(1e-12), 0.0)
    return {"accuracy": float((logits.argmax(1) == y).mean()), "loss": float(nll.mean())}
