"""Pseudo-label augmentation for few-shot sites (AUG-FedPrompt).

Cai et al., "AUG-FedPrompt: Practical Few-shot Federated NLP with Data-augmented Prompts" (2022) and
"Federated Few-Shot Learning for Mobile NLP" (MobiCom 2023): a site holds a few labelled examples and many
unlabelled ones.  After a warm-up, each round it labels its unlabelled pool with the current global prompt,
keeps only confident predictions, and trains on labelled + pseudo-labelled data.  Three guards keep noisy
labels from snowballing, as in the paper's filtering: a confidence threshold, a per-class cap (highest
confidence first), and class balance (no class contributes more than the rarest confidently predicted
class), so a prompt biased towards one class cannot flood the training set with that class.  Pseudo-labels
are recomputed from scratch every round, so labels the improving prompt now rejects are dropped.

Gold labels of the pool exist only in simulation (``SiteData.unlabelled_gold``).  ``PseudoLabeller`` keeps
them in a private field that only ``_measure`` reads, to report ``pseudo_label_accuracy``; the examples
and labels returned for training are computed before and independently of them.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import structlog

from fedprompt.config import AugmentSection
from fedprompt.data.datasets import Example, label_indices
from fedprompt.errors import ConfigError

log = structlog.get_logger("participant.fewshot")


@dataclass(frozen=True)
class Selection:
    """Kept pool positions (ascending) and the class predicted for each."""

    indices: np.ndarray
    labels: np.ndarray


def select_confident(probs: np.ndarray, threshold: float, per_class_cap: int, balance: bool) -> Selection:
    """Keep predictions with max probability >= ``threshold``: per class the most confident, at most
    ``per_class_cap``, and with ``balance`` at most as many as the rarest class that has any kept."""
    confidence = probs.max(axis=1)
    predicted = probs.argmax(axis=1)
    per_class = []
    for cls in range(probs.shape[1]):
        idx = np.flatnonzero((predicted == cls) & (confidence >= threshold))
        per_class.append(idx[np.argsort(-confidence[idx], kind="stable")])
    cap = per_class_cap
    counts = [len(idx) for idx in per_class if len(idx)]
    if balance and counts:
        cap = min(cap, min(counts))
    kept = [(idx[:cap], cls) for cls, idx in enumerate(per_class)]
    indices = np.concatenate([idx for idx, _ in kept]).astype(np.int64)
    labels = np.concatenate([np.full(len(idx), cls, dtype=np.int64) for idx, cls in kept])
    order = np.argsort(indices, kind="stable")
    return Selection(indices[order], labels[order])


class PseudoLabeller:
    """One site's unlabelled pool and its per-round pseudo-labelling under an ``[augment]`` config."""

    def __init__(
        self,
        settings: AugmentSection,
        pool: Sequence[Example],
        label_names: tuple[str, ...],
        seed: str,
        gold: Sequence[str] = (),
    ) -> None:
        if gold and len(gold) != len(pool):
            raise ConfigError(f"data: {len(gold)} gold labels for an unlabelled pool of {len(pool)}")
        keep = np.arange(len(pool))
        if settings.max_unlabelled and len(pool) > settings.max_unlabelled:
            rng = np.random.default_rng(zlib.crc32(seed.encode()))
            keep = np.sort(rng.permutation(len(pool))[: settings.max_unlabelled])
        self.settings = settings
        self.label_names = label_names
        self.texts = [pool[int(i)].text for i in keep]
        self._gold = np.asarray(label_indices([Example("", gold[int(i)]) for i in keep], label_names)) if gold else None

    def active(self, round_number: int) -> bool:
        """Whether round ``round_number`` trains on pseudo-labels: after the warm-up, with a pool to label."""
        return round_number > self.settings.warmup_rounds and bool(self.texts)

    def gate(self, predict_proba: Callable[[list[str]], np.ndarray], labelled: Sequence[Example],
             labels: Sequence[int]) -> dict[str, float]:
        """Whether the current global prompt may pseudo-label (``settings.gate``): it must beat the majority
        class on this site's labelled examples.  Returns the check's metrics; ``pseudo_label_gated`` 1 = skip."""
        if not self.settings.gate or not labels:
            return {}
        y = np.asarray(labels)
        accuracy = float((predict_proba([e.text for e in labelled]).argmax(axis=1) == y).mean())
        majority = float(np.bincount(y).max() / len(y))
        return {"pseudo_label_gate_accuracy": accuracy, "pseudo_label_gated": float(accuracy <= majority)}

    def label(self, predict_proba: Callable[[list[str]], np.ndarray], labelled: Sequence[Example] = (),
              labels: Sequence[int] = ()) -> tuple[list[Example], list[int], dict[str, float]]:
        """Label the pool with ``predict_proba`` (label probabilities under the current global prompt); returns
        the kept examples, their label indices, and metrics (count, seconds, and accuracy where gold is known).
        Nothing is labelled when the prompt fails the ``gate`` on the ``labelled`` examples."""
        gate = self.gate(predict_proba, labelled, labels)
        if gate.get("pseudo_label_gated"):
            log.info("pseudo-labelling skipped: the global prompt does not beat the majority class on the "
                     "labelled examples", accuracy=round(gate["pseudo_label_gate_accuracy"], 3))
            return [], [], {"pseudo_labels": 0.0, "pseudo_label_pool": float(len(self.texts)), **gate}
        began = time.perf_counter()
        probs = predict_proba(self.texts)
        chosen = select_confident(probs, self.settings.threshold, self.settings.per_class_cap, self.settings.balance)
        seconds = time.perf_counter() - began
        examples = [Example(self.texts[int(i)], self.label_names[int(y)]) for i, y in zip(chosen.indices, chosen.labels)]
        labels = [int(y) for y in chosen.labels]
        metrics = {"pseudo_labels": float(len(labels)), "pseudo_label_pool": float(len(self.texts)),
                   "pseudo_label_seconds": seconds, **gate, **self._measure(probs, chosen)}
        log.info("pool pseudo-labelled", pool=len(self.texts), kept=len(labels), seconds=round(seconds, 2))
        return examples, labels, metrics

    def _measure(self, probs: np.ndarray, chosen: Selection) -> dict[str, float]:
        """Accuracy of the kept pseudo-labels and of the unfiltered predictions, where gold is known."""
        if self._gold is None:
            return {}
        out = {"pseudo_label_pool_accuracy": float((probs.argmax(axis=1) == self._gold).mean())}
        if len(chosen.indices):
            out["pseudo_label_accuracy"] = float((self._gold[chosen.indices] == chosen.labels).mean())
        return out
