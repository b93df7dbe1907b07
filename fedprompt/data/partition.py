"""Seeded partitioners that split a labelled training set across participants, as index lists.

- ``iid``: a uniform random split.
- ``dirichlet``: label skew, per class proportions drawn from Dir(alpha) over participants
  (Hsu et al., "Measuring the Effects of Non-Identical Data Distribution", 2019); smaller alpha, more skew.
- ``fewshot``: the AUG-FedPrompt setting (Cai et al., "Federated Few-Shot Learning for Mobile NLP", 2023):
  a small labelled budget whose *quantity* is skewed across participants (Dir(quantity_alpha)) and whose
  *label mix* per participant is skewed (Dir(label_alpha)); the rest of each participant's share is an
  unlabelled pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedprompt.errors import ConfigError


@dataclass(frozen=True)
class Shard:
    """One participant's indices into the training set: labelled, and (few-shot only) unlabelled."""

    labelled: list[int]
    unlabelled: list[int]


def _check_counts(n_items: int, n_parts: int) -> None:
    if n_parts < 1:
        raise ConfigError(f"participants: must be >= 1, got {n_parts}")
    if n_items < n_parts:
        raise ConfigError(f"participants: {n_parts} participants need at least as many examples, got {n_items}")


def iid(labels: list[int], n_parts: int, seed: int) -> list[Shard]:
    """Uniform random split into near-equal shards."""
    _check_counts(len(labels), n_parts)
    order = np.random.default_rng(seed).permutation(len(labels))
    return [Shard(sorted(part.tolist()), []) for part in np.array_split(order, n_parts)]


def dirichlet(labels: list[int], n_parts: int, alpha: float, seed: int, min_size: int = 10) -> list[Shard]:
    """Label-skewed split; resamples until every shard has ``min_size`` examples (bounded attempts)."""
    _check_counts(len(labels), n_parts)
    if alpha <= 0:
        raise ConfigError(f"alpha: must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    for _attempt in range(1000):
        parts: list[list[int]] = [[] for _ in range(n_parts)]
        for cls in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == cls))
            proportions = rng.dirichlet(np.full(n_parts, alpha))
            cuts = (np.cumsum(proportions) * len(idx)).astype(int)[:-1]
            for part, chunk in zip(parts, np.split(idx, cuts)):
                part.extend(chunk.tolist())
        if min(len(p) for p in parts) >= min(min_size, len(labels) // n_parts):
            return [Shard(sorted(p), []) for p in parts]
    raise ConfigError(f"alpha={alpha}: could not give every one of {n_parts} participants {min_size} examples")


def fewshot(
    labels: list[int],
    n_parts: int,
    shots_per_participant: int,
    quantity_alpha: float,
    label_alpha: float,
    seed: int,
) -> list[Shard]:
    """Few-shot split: labelled counts ~ Dir(quantity_alpha) of the total budget, label mix ~ Dir(label_alpha).

    Every participant gets at least one labelled example; examples not drawn as labelled are dealt round
    robin into the participants' unlabelled pools (for pseudo-labelling).
    """
    _check_counts(len(labels), n_parts)
    if shots_per_participant < 1:
        raise ConfigError(f"shots: must be >= 1, got {shots_per_participant}")
    if quantity_alpha <= 0 or label_alpha <= 0:
        raise ConfigError("quantity_alpha and label_alpha: must be > 0")
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    classes = np.unique(y)
    budget = shots_per_participant * n_parts
    if budget > len(labels):
        raise ConfigError(f"shots: {budget} labelled examples requested, only {len(labels)} available")
    quantities = np.maximum(1, np.round(rng.dirichlet(np.full(n_parts, quantity_alpha)) * budget).astype(int))
    pools = {int(c): list(rng.permutation(np.flatnonzero(y == c))) for c in classes}
    taken: set[int] = set()
    labelled: list[list[int]] = []
    for quantity in quantities:
        mix = rng.dirichlet(np.full(len(classes), label_alpha))
        wanted = rng.multinomial(int(quantity), mix)
        mine: list[int] = []
        for cls, count in zip(classes, wanted):
            pool = pools[int(cls)]
            mine.extend(int(pool.pop()) for _ in range(min(int(count), len(pool))))
        labelled.append(sorted(mine))
        taken.update(mine)
    rest = [i for i in rng.permutation(len(labels)).tolist() if i not in taken]
    unlabelled = [sorted(rest[k::n_parts]) for k in range(n_parts)]
    return [Shard(lab, unl) for lab, unl in zip(labelled, unlabelled)]
