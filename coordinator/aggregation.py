"""Aggregation rules: a small plug-in interface, chosen by name from a registry.

The maths lives in module-level pure functions that tests call directly; an ``Aggregator`` wraps one for
the round machinery.  Participants submit prompt *deltas* (new local prompt minus the global they started
from) with their example counts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fedprompt.errors import ConfigError, InvalidUpdate


@dataclass(frozen=True)
class Contribution:
    """One participant's decoded update for a round."""

    participant_id: str
    num_examples: int
    delta: np.ndarray


@dataclass(frozen=True)
class AggregateResult:
    vector: np.ndarray
    accepted: tuple[str, ...]
    metrics: dict[str, float] = field(default_factory=dict)


def weighted_mean(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Σ w_i v_i / Σ w_i in float64, returned as float32; weights must be positive."""
    if not vectors:
        raise InvalidUpdate("no updates to aggregate")
    w = np.asarray(weights, dtype=np.float64)
    if (w <= 0).any():
        raise InvalidUpdate("aggregation weights must be positive")
    stacked = np.stack([np.asarray(v, dtype=np.float64) for v in vectors])
    return (w @ stacked / w.sum()).astype(np.float32)


class Aggregator(ABC):
    """Turns the current global vector and a round's contributions into the next global vector."""

    name: str

    @abstractmethod
    def aggregate(self, global_vector: np.ndarray, contributions: Sequence[Contribution]) -> AggregateResult:
        """Return the new global vector; raise ``InvalidUpdate`` if the contributions cannot be combined."""


class FedAvg(Aggregator):
    """Federated averaging (McMahan et al., "Communication-Efficient Learning of Deep Networks from
    Decentralized Data", 2017): global + the example-weighted mean of the deltas."""

    name = "fedavg"

    def aggregate(self, global_vector: np.ndarray, contributions: Sequence[Contribution]) -> AggregateResult:
        mean_delta = weighted_mean([c.delta for c in contributions], [c.num_examples for c in contributions])
        norms = [float(np.linalg.norm(c.delta)) for c in contributions]
        return AggregateResult(
            vector=(global_vector.astype(np.float64) + mean_delta).astype(np.float32),
            accepted=tuple(c.participant_id for c in contributions),
            metrics={"update_norm_mean": float(np.mean(norms)), "update_norm_max": float(np.max(norms))},
        )


AGGREGATORS: dict[str, type[Aggregator]] = {FedAvg.name: FedAvg}


def make_aggregator(name: str) -> Aggregator:
    """Build an aggregator from its registry name (the ``job.aggregator`` config key)."""
    if name not in AGGREGATORS:
        raise ConfigError(f"job.aggregator: unknown {name!r}; choose one of {sorted(AGGREGATORS)}")
    return AGGREGATORS[name]()
