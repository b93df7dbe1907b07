"""Aggregation rules: a small plug-in interface, chosen by name from a registry.

The maths lives in module-level pure functions that tests call directly; an ``Aggregator`` wraps one for
the round machinery.  Participants submit *deltas* (new local vector minus the global they started from)
with their example counts.  In black-box jobs the vector is a FedBPT search state ``[z_1 .. z_d, sigma]``.

Each class declares its kind, and what a job may combine it with follows from that alone
(``job_aggregator``): a **linear** rule is one weighted sum, so the encrypted fold computes it
(``coordinator.accumulators.EncryptedAccumulator``); a **Gram** defence (``GramDefence``) decides which
updates to keep from the Gram matrix of the deltas alone (``coordinator.robust``) and then averages the kept
ones, which is the seam for encrypted updates: the encrypted path (``coordinator.accumulators.GramFold``)
computes the Gram matrix on ciphertexts, has two key holders decrypt its scalars, calls the same ``judge``
and sums only the accepted ciphertexts; a **black-box** rule aggregates FedBPT search states and serves
black-box jobs only.  Coordinate-wise defences (median, trimmed mean) are none of these: they need every
coordinate and exist for plaintext gradient jobs only.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fedprompt.config import JobConfig, RobustSection
from fedprompt.coordinator.robust import (
    Decision,
    coordinate_median,
    gram,
    multi_krum,
    norm_outliers,
    norms_from_gram,
    similarity_filter,
    trimmed_mean,
)
from fedprompt.crypto import threshold_gram
from fedprompt.crypto.errors import ParameterError
from fedprompt.errors import ConfigError, InvalidUpdate
from fedprompt.wire.payload import pack_search_state, search_state


@dataclass(frozen=True)
class Contribution:
    """One participant's decoded update for a round."""

    participant_id: str
    num_examples: int
    delta: np.ndarray


@dataclass(frozen=True)
class RoundDecision:
    """A defence's verdict on one round, by participant: who was kept, who was rejected, and each score."""

    defence: str
    score_name: str
    accepted: tuple[str, ...]
    rejected: tuple[str, ...]
    scores: dict[str, float]


@dataclass(frozen=True)
class AggregateResult:
    vector: np.ndarray
    accepted: tuple[str, ...]
    metrics: dict[str, float] = field(default_factory=dict)
    decision: RoundDecision | None = None


def weighted_mean(vectors: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Σ w_i v_i / Σ w_i in float64, returned as float32; weights must be positive."""
    if not vectors:
        raise InvalidUpdate("no updates to aggregate")
    w = np.asarray(weights, dtype=np.float64)
    if (w <= 0).any():
        raise InvalidUpdate("aggregation weights must be positive")
    stacked = np.stack([np.asarray(v, dtype=np.float64) for v in vectors])
    return (w @ stacked / w.sum()).astype(np.float32)


def _stack(contributions: Sequence[Contribution]) -> np.ndarray:
    if not contributions:
        raise InvalidUpdate("no updates to aggregate")
    return np.stack([np.asarray(c.delta, dtype=np.float64) for c in contributions])


def _norm_metrics(contributions: Sequence[Contribution]) -> dict[str, float]:
    norms = [float(np.linalg.norm(c.delta)) for c in contributions]
    return {"update_norm_mean": float(np.mean(norms)), "update_norm_max": float(np.max(norms))}


def _apply(global_vector: np.ndarray, delta: np.ndarray) -> np.ndarray:
    return (global_vector.astype(np.float64) + delta).astype(np.float32)


class Aggregator(ABC):
    """Turns the current global vector and a round's contributions into the next global vector."""

    name: str
    flags = False  # whether it judges participants (and so yields a RoundDecision)
    quarantines = False  # whether its rejections count towards quarantine
    linear = False  # one weighted sum of the updates: an encrypted fold computes it
    gram = False  # decides from the updates' Gram matrix alone: also under encryption
    blackbox = False  # aggregates black-box (FedBPT) search states: black-box jobs only, and they only these

    def __init__(self, robust: RobustSection | None = None) -> None:
        self.robust = robust or RobustSection()

    def minimum_updates(self) -> int:
        """The fewest updates this rule accepts to aggregate (its assumption); job configs are checked against it."""
        return 1

    def check(self, global_vector: np.ndarray, delta: np.ndarray) -> None:  # noqa: B027 - optional hook
        """Called before an update is accepted into the round: rules with more structure than a plain vector
        raise ``InvalidUpdate`` for one they cannot use; by default every decoded update is usable."""

    @abstractmethod
    def aggregate(self, global_vector: np.ndarray, contributions: Sequence[Contribution]) -> AggregateResult:
        """Return the new global vector; raise ``InvalidUpdate`` if the contributions cannot be combined, or
        ``RobustAssumptionError`` if the rule's assumption does not hold for them."""


class FedAvg(Aggregator):
    """Federated averaging (McMahan et al., "Communication-Efficient Learning of Deep Networks from
    Decentralized Data", 2017): global + the example-weighted mean of the deltas."""

    name = "fedavg"
    linear = True

    def aggregate(self, global_vector: np.ndarray, contributions: Sequence[Contribution]) -> AggregateResult:
        mean_delta = weighted_mean([c.delta for c in contributions], [c.num_examples for c in contributions])
        return AggregateResult(_apply(global_vector, mean_delta), tuple(c.participant_id for c in contributions),
                               _norm_metrics(contributions))


class GramDefence(Aggregator):
    """Decide from the Gram matrix which updates to keep, then take the example-weighted mean of those.

    ``judge`` sees only the participant ids and ``G``, so the encrypted path (``coordinator.hegram``) calls
    it unchanged on the decrypted Gram scalars and the two paths decide identically on the same updates.
    """

    flags = True
    quarantines = True
    gram = True

    @abstractmethod
    def decide(self, g: np.ndarray) -> Decision:
        """The decision for a round whose deltas have Gram matrix ``g`` (rows in contribution order)."""

    def most_kept(self, n: int) -> tuple[int, str]:
        """The most updates ``decide`` keeps of ``n``, and the setting that caps it below ``n`` ("" when none
        does): under threshold keys members decrypt no accepted sum of fewer than ``job.min_participants``
        (``participant.threshold_gramkeys``), so a rule that always keeps fewer can never aggregate there."""
        return n, ""

    def judge(self, ids: Sequence[str], g: np.ndarray) -> tuple[RoundDecision, dict[str, float]]:
        """The round's verdict by participant id, and its metrics (update norms from ``sqrt(G_ii)``)."""
        decision = self.decide(g)
        verdict = RoundDecision(self.name, decision.score_name, tuple(ids[i] for i in decision.accepted),
                                tuple(ids[i] for i in decision.rejected),
                                {pid: decision.scores[i] for i, pid in enumerate(ids)})
        norms = norms_from_gram(g)
        metrics = {"update_norm_mean": float(np.mean(norms)), "update_norm_max": float(np.max(norms)),
                   "accepted": float(len(verdict.accepted)), "rejected": float(len(verdict.rejected))}
        return verdict, metrics

    def aggregate(self, global_vector: np.ndarray, contributions: Sequence[Contribution]) -> AggregateResult:
        verdict, metrics = self.judge([c.participant_id for c in contributions], gram(_stack(contributions)))
        kept = [c for c in contributions if c.participant_id in verdict.accepted]
        mean_delta = weighted_mean([c.delta for c in kept], [c.num_examples for c in kept])
        return AggregateResult(_apply(global_vector, mean_delta), verdict.accepted, metrics, verdict)


class NormBound(GramDefence):
    """Reject updates whose norm exceeds ``robust.norm_factor`` x the median norm (``robust.norm_outliers``)."""

    name = "norm_bound"

    def minimum_updates(self) -> int:
        return 2 * self.robust.max_malicious + 1

    def decide(self, g: np.ndarray) -> Decision:
        return norm_outliers(g, self.robust.max_malicious, self.robust.norm_factor)


class Krum(GramDefence):
    """Krum (Blanchard et al. 2017): keep the single update closest to its n - f - 2 nearest neighbours.

    Its n - 1 "rejections" are non-selections, not accusations, so they do not count towards quarantine.
    """

    name = "krum"
    quarantines = False

    def minimum_updates(self) -> int:
        return 2 * self.robust.max_malicious + 3

    def most_kept(self, n: int) -> tuple[int, str]:
        return 1, "job.aggregator"

    def decide(self, g: np.ndarray) -> Decision:
        return multi_krum(g, self.robust.max_malicious, 1)


class MultiKrum(Krum):
    """Multi-Krum (Blanchard et al. 2017): keep the ``robust.multi_krum_keep`` best-scored updates
    (0 = n - f) and average them."""

    name = "multi_krum"
    quarantines = True

    def minimum_updates(self) -> int:
        return max(super().minimum_updates(), self.robust.multi_krum_keep + self.robust.max_malicious)

    def most_kept(self, n: int) -> tuple[int, str]:
        keep = self.robust.multi_krum_keep
        return (keep, "robust.multi_krum_keep") if keep else (n - self.robust.max_malicious, "job.min_participants")

    def decide(self, g: np.ndarray) -> Decision:
        f = self.robust.max_malicious
        return multi_krum(g, f, self.robust.multi_krum_keep or g.shape[0] - f)


class FoolsGold(GramDefence):
    """FoolsGold-like similarity defence (Fung et al. 2020): drop updates suspiciously similar to another."""

    name = "foolsgold"

    def minimum_updates(self) -> int:
        return 3

    def decide(self, g: np.ndarray) -> Decision:
        return similarity_filter(g, self.robust.max_malicious)


class CoordinateMedian(Aggregator):
    """Coordinate-wise median of the deltas (Yin et al. 2018); plaintext-only, flags no participant."""

    name = "median"

    def minimum_updates(self) -> int:
        return 2 * self.robust.max_malicious + 1

    def aggregate(self, global_vector: np.ndarray, contributions: Sequence[Contribution]) -> AggregateResult:
        delta = coordinate_median(_stack(contributions), self.robust.max_malicious)
        return AggregateResult(_apply(global_vector, delta), tuple(c.participant_id for c in contributions),
                               _norm_metrics(contributions))


class TrimmedMean(CoordinateMedian):
    """Coordinate-wise trimmed mean, ``f`` trimmed at each end (Yin et al. 2018); plaintext-only."""

    name = "trimmed_mean"

    def aggregate(self, global_vector: np.ndarray, contributions: Sequence[Contribution]) -> AggregateResult:
        delta = trimmed_mean(_stack(contributions), self.robust.max_malicious)
        return AggregateResult(_apply(global_vector, delta), tuple(c.participant_id for c in contributions),
                               _norm_metrics(contributions))


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
    """FedBPT's plaintext aggregation of local CMA-ES search states (see ``fedbpt_global_distribution``).

    The merged step size is capped at the previous global one: moment matching alone adds the participants'
    disagreement every round, and with non-IID sites the search widened round after round while accuracy
    swung (measured: sigma 1.0 -> 1.6 over 4 rounds, accuracy 0.62-0.68).  FedBPT's reference implementation
    (NVFlare ``research/fed-bpt``, ``GlobalES``) likewise clamps the step size it hands back to the clients
    instead of sending its raw estimate.
    """

    name = "fedbpt"
    blackbox = True

    def check(self, global_vector: np.ndarray, delta: np.ndarray) -> None:
        check_step_size(global_vector, delta)

    def aggregate(self, global_vector: np.ndarray, contributions: Sequence[Contribution]) -> AggregateResult:
        if not contributions:
            raise InvalidUpdate("no updates to aggregate")
        states = [search_state(global_vector.astype(np.float64) + c.delta) for c in contributions]
        weights = [c.num_examples for c in contributions]
        mean, matched = fedbpt_global_distribution(np.stack([m for m, _ in states]),
                                                   np.array([s for _, s in states]), weights)
        old_mean, old_sigma = search_state(global_vector.astype(np.float64))
        sigma = min(matched, old_sigma)
        return AggregateResult(
            vector=pack_search_state(mean, sigma), accepted=tuple(c.participant_id for c in contributions),
            metrics={"sigma": sigma, "sigma_matched": matched, "sigma_change": sigma - old_sigma,
                     "mean_shift": float(np.linalg.norm(mean - old_mean))},
        )


class FedBPTLinear(FedAvg):
    """FedBPT's HE-compatible variant: the example-weighted average of the local means *and* step sizes,
    i.e. FedAvg on the search-state deltas.  It is one weighted sum, so an additively homomorphic (CKKS)
    fold can compute it without seeing any participant's state."""

    name = "fedbpt_linear"
    blackbox = True

    def check(self, global_vector: np.ndarray, delta: np.ndarray) -> None:
        check_step_size(global_vector, delta)


class UniformWeights(Aggregator):
    """Wraps an aggregator so every update counts once, with at least ``min_updates`` of them (fail closed);
    participant-level DP wraps the job's rule in it, as Flower's DP strategies wrap a strategy.

    Participant-level sensitivity is the clip bound C only if no update is scaled up by a weight, and the
    noise shares add up to the promised total only with at least ``min_updates`` shares.
    """

    def __init__(self, inner: Aggregator, min_updates: int) -> None:
        self.inner = inner
        self.min_updates = min_updates
        self.name = inner.name
        self.flags, self.quarantines = inner.flags, inner.quarantines
        self.linear, self.gram, self.blackbox = inner.linear, inner.gram, inner.blackbox

    def minimum_updates(self) -> int:
        return max(self.min_updates, self.inner.minimum_updates())

    def check(self, global_vector: np.ndarray, delta: np.ndarray) -> None:
        self.inner.check(global_vector, delta)

    def aggregate(self, global_vector: np.ndarray, contributions: Sequence[Contribution]) -> AggregateResult:
        if len(contributions) < self.min_updates:
            raise InvalidUpdate(f"participant-level DP needs at least {self.min_updates} updates, got "
                                f"{len(contributions)}")
        return self.inner.aggregate(global_vector, [dataclasses.replace(c, num_examples=1) for c in contributions])


AGGREGATORS: dict[str, type[Aggregator]] = {
    cls.name: cls for cls in (FedAvg, NormBound, CoordinateMedian, TrimmedMean, Krum, MultiKrum, FoolsGold, FedBPT,
                               FedBPTLinear)
}


def make_aggregator(name: str, robust: RobustSection | None = None) -> Aggregator:
    """Build an aggregator from its registry name (the ``job.aggregator`` config key)."""
    if name not in AGGREGATORS:
        raise ConfigError(f"job.aggregator: unknown {name!r}; choose one of {sorted(AGGREGATORS)}")
    return AGGREGATORS[name](robust)


def job_aggregator(config: JobConfig) -> Aggregator:
    """The job's aggregator, refusing a config it cannot serve: a kind that does not fit the job (black-box
    or not, encrypted or not, levelled), or a minimum of updates below the rule's assumption."""
    aggregator = make_aggregator(config.job.aggregator, config.robust)
    blackbox = config.blackbox.enabled
    kinds = sorted(name for name, cls in AGGREGATORS.items() if cls.blackbox)
    if blackbox and not aggregator.blackbox:
        raise ConfigError(f"job.aggregator: a black-box job aggregates search states: choose one of {kinds}")
    if not blackbox and aggregator.blackbox:
        raise ConfigError(f"job.aggregator: {aggregator.name!r} aggregates black-box search states; set "
                          "blackbox.enabled = true")
    if config.he.enabled:
        allowed = [name for name, cls in AGGREGATORS.items() if cls.blackbox == blackbox and (cls.linear or cls.gram)]
        if aggregator.name not in allowed:
            raise ConfigError(f"job.aggregator: encrypted aggregation (he.enabled) supports {', '.join(allowed)} in a "
                              f"{config.mode} job, got {aggregator.name!r}")
        if config.he.threshold_mode and isinstance(aggregator, GramDefence):
            _check_threshold_gram(config, aggregator)
        if config.levels.enabled and aggregator.gram:
            raise ConfigError("job.aggregator: an encrypted Gram defence cannot yet judge levelled updates (one Gram "
                              "per level is not built); with levels and he.enabled use 'fedavg'")
    needed = aggregator.minimum_updates()
    if config.job.min_participants < needed:
        raise ConfigError(f"job.min_participants: {aggregator.name} with robust.max_malicious="
                          f"{config.robust.max_malicious} needs at least {needed} updates per round, "
                          f"got min_participants={config.job.min_participants}")
    return aggregator


def _check_threshold_gram(config: JobConfig, defence: GramDefence) -> None:
    """A Gram defence under threshold keys (``coordinator.threshold_gramjob``): it must be able to keep
    ``job.min_participants`` of a round's updates, the fewest whose sum members decrypt; and its flooding, sized
    on ``he.gram_norm_bound`` for one update per member, must fit the Gram chain (``crypto.threshold_gram.check``)."""
    n = len(config.job.allowed_participants)
    most, key = defence.most_kept(min(config.job.participants_per_round, n))
    if most < config.job.min_participants:
        raise ConfigError(f"{key or 'job.min_participants'}: {defence.name} keeps at most {most} of a round's "
                          "updates here (job.participants_per_round, robust.max_malicious, robust.multi_krum_keep), "
                          "and under threshold keys members decrypt no accepted sum of fewer than "
                          f"job.min_participants = {config.job.min_participants} (a smaller one could reveal one "
                          "member's update): no round could aggregate")
    try:
        threshold_gram.check(config.he.threshold_params(n, gram=True), n, config.he.gram_norm_bound)
    except ParameterError as exc:
        raise ConfigError(f"he.gram_norm_bound: {exc}") from exc
