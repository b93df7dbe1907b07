"""Aggregation rules: a small plug-in interface, chosen by name from a registry.

The maths lives in module-level pure functions that tests call directly; an ``Aggregator`` wraps one for
the round machinery.  Participants submit *deltas* (new local vector minus the global they started from)
with their example counts.  In black-box jobs the vector is a FedBPT search state ``[z_1 .. z_d, sigma]``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fedprompt.errors import ConfigError, InvalidUpdate
from fedprompt.payload import pack_search_state, search_state


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

    def check(self, global_vector: np.ndarray, delta: np.ndarray) -> None:  # noqa: B027 - optional hook
        """Called before an update is accepted into the round: rules with more structure than a plain vector
        raise ``InvalidUpdate`` for one they cannot use; by default every decoded update is usable."""

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


def fedbpt_global_distribution(means: np.ndarray, sigmas: np.ndarray, weights: Sequence[float]
                                ) -> tuple[np.ndarray, float]:
    """FedBPT's server step (Sun et al. 2023): merge the local search distributions N(m_k, sigma_k^2 I) into
    one global distribution.  The mean is the example-weighted mean of the local means; the step size is that
    of the isotropic Gaussian matching the second moment of the weighted mixture,
    ``sigma^2 = sum_k w_k sigma_k^2 + sum_k w_k ||m_k - m||^2 / d``, so the next round's search also covers
    where the participants disagreed.  Needs each local mean in the clear: plaintext jobs only.
    """
    if means.ndim != 2 or len(means) != len(sigmas) or len(means) != len(weights):
        raise InvalidUpdate("need one mean (row) and one step size per weight")
    if (np.asarray(sigmas) <= 0).any():
        raise InvalidUpdate("step sizes must be positive")
    w = np.asarray(weights, dtype=np.float64)
    if (w <= 0).any():
        raise InvalidUpdate("aggregation weights must be positive")
    w = w / w.sum()
    m = np.asarray(means, dtype=np.float64)
    mean = w @ m
    spread = float(w @ ((m - mean) ** 2).sum(axis=1)) / m.shape[1]
    return mean, math.sqrt(float(w @ np.asarray(sigmas, dtype=np.float64) ** 2) + spread)


def check_step_size(global_vector: np.ndarray, delta: np.ndarray) -> None:
    """A search-state update must leave the participant's step size positive."""
    _, sigma = search_state(global_vector.astype(np.float64) + delta)
    if not sigma > 0:
        raise InvalidUpdate(f"the update's step size global + delta = {sigma:.6g} is not positive")


class FedBPT(Aggregator):
    """FedBPT's plaintext aggregation of local CMA-ES search states (see ``fedbpt_global_distribution``)."""

    name = "fedbpt"

    def check(self, global_vector: np.ndarray, delta: np.ndarray) -> None:
        check_step_size(global_vector, delta)

    def aggregate(self, global_vector: np.ndarray, contributions: Sequence[Contribution]) -> AggregateResult:
        if not contributions:
            raise InvalidUpdate("no updates to aggregate")
        states = [search_state(global_vector.astype(np.float64) + c.delta) for c in contributions]
        weights = [c.num_examples for c in contributions]
        mean, sigma = fedbpt_global_distribution(np.stack([m for m, _ in states]), np.array([s for _, s in states]),
                                                 weights)
        old_mean, old_sigma = search_state(global_vector.astype(np.float64))
        return AggregateResult(
            vector=pack_search_state(mean, sigma), accepted=tuple(c.participant_id for c in contributions),
            metrics={"sigma": sigma, "sigma_change": sigma - old_sigma,
                     "mean_shift": float(np.linalg.norm(mean - old_mean))},
        )


class FedBPTLinear(FedAvg):
    """FedBPT's HE-compatible variant: the example-weighted average of the local means *and* step sizes,
    i.e. FedAvg on the search-state deltas.  It is one weighted sum, so an additively homomorphic (CKKS)
    fold can compute it without seeing any participant's state."""

    name = "fedbpt_linear"

    def check(self, global_vector: np.ndarray, delta: np.ndarray) -> None:
        check_step_size(global_vector, delta)


AGGREGATORS: dict[str, type[Aggregator]] = {a.name: a for a in (FedAvg, FedBPT, FedBPTLinear)}


def make_aggregator(name: str) -> Aggregator:
    """Build an aggregator from its registry name (the ``job.aggregator`` config key)."""
    if name not in AGGREGATORS:
        raise ConfigError(f"job.aggregator: unknown {name!r}; choose one of {sorted(AGGREGATORS)}")
    return AGGREGATORS[name]()
