"""Robust-aggregation maths (pure functions): Gram decisions equal direct-vector ones; every refusal case."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedprompt.config import JobConfig, RobustSection
from fedprompt.coordinator.aggregation import AGGREGATORS, Contribution, GramDefence, job_aggregator, make_aggregator
from fedprompt.coordinator.robust import (
    coordinate_median,
    cosine_similarities,
    foolsgold_weights,
    gram,
    krum_scores,
    multi_krum,
    norm_outliers,
    norms_from_gram,
    similarity_filter,
    squared_distances,
    trimmed_mean,
)
from fedprompt.errors import ConfigError, InvalidUpdate, RobustAssumptionError

finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def update_matrices(draw: st.DrawFn, min_n: int = 3, max_n: int = 10) -> np.ndarray:
    n = draw(st.integers(min_n, max_n))
    d = draw(st.integers(1, 12))
    return draw(arrays(np.float64, (n, d), elements=finite))


def direct_krum_scores(d: np.ndarray, f: int) -> np.ndarray:
    """Krum from the vectors themselves, the textbook way."""
    n = len(d)
    scores = []
    for i in range(n):
        dist = sorted(float(np.sum((d[i] - d[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(dist[: n - f - 2]))
    return np.array(scores)


@given(update_matrices())
def test_gram_distances_norms_and_cosines_equal_direct_vector_maths(d: np.ndarray) -> None:
    g = gram(d)
    direct = np.array([[np.sum((a - b) ** 2) for b in d] for a in d])
    scale = 1.0 + np.abs(direct).max()
    assert np.allclose(squared_distances(g), direct, atol=1e-9 * scale)
    assert np.allclose(norms_from_gram(g), np.linalg.norm(d, axis=1), atol=1e-6)
    cos = cosine_similarities(g)
    for i, j in itertools.product(range(len(d)), repeat=2):
        ni, nj = np.linalg.norm(d[i]), np.linalg.norm(d[j])
        if ni > 1e-6 and nj > 1e-6:
            assert cos[i, j] == pytest.approx(float(d[i] @ d[j]) / (ni * nj), abs=1e-6)


@settings(max_examples=60)
@given(update_matrices(min_n=5, max_n=10), st.integers(0, 1))
def test_krum_and_multi_krum_from_gram_equal_direct_vector_decisions(d: np.ndarray, f: int) -> None:
    g = gram(d)
    direct = direct_krum_scores(d, f)
    scale = 1.0 + np.abs(direct).max()
    assert np.allclose(krum_scores(g, f), direct, atol=1e-8 * scale)
    m = len(d) - f
    decision = multi_krum(g, f, m)
    gap = np.sort(direct)
    if m < len(d) and gap[m] - gap[m - 1] > 1e-6 * scale:  # a clear cut: the kept set is unambiguous
        assert set(decision.accepted) == set(np.argsort(direct)[:m].tolist())


@given(update_matrices(min_n=3, max_n=9), st.floats(1.1, 5.0))
def test_norm_decision_from_gram_equals_direct_norms(d: np.ndarray, factor: float) -> None:
    norms = np.linalg.norm(d, axis=1)
    median = np.median(norms)
    decision = norm_outliers(gram(d), 1, factor)
    if median > 1e-6:
        ratios = norms / median
        clear = np.abs(ratios - factor) > 1e-6
        assert {i for i in np.flatnonzero(clear) if ratios[i] <= factor} == {i for i in decision.accepted if clear[i]}


def honest_and_scaled(n_honest: int = 8, n_bad: int = 2, dim: int = 50, scale: float = 5.0) -> np.ndarray:
    rng = np.random.default_rng(1)
    base = rng.normal(0, 1, dim)
    honest = base + rng.normal(0, 0.5, (n_honest, dim))
    backdoor = rng.normal(0, 1, dim)
    bad = scale * (backdoor + rng.normal(0, 0.05, (n_bad, dim)))
    return np.vstack([honest, bad])


def test_scaled_attackers_are_rejected_by_every_gram_defence() -> None:
    d = honest_and_scaled()
    g = gram(d)
    assert norm_outliers(g, 2, 2.0).rejected == (8, 9)
    assert multi_krum(g, 2, 8).rejected == (8, 9)
    assert multi_krum(g, 2, 1).accepted[0] < 8
    assert set(similarity_filter(g, 2).rejected) >= {8, 9}


def test_norm_bounding_refuses_without_honest_majority_or_with_factor_at_most_one() -> None:
    g = gram(honest_and_scaled(3, 2))
    with pytest.raises(RobustAssumptionError, match="at least 7 updates for f=3"):
        norm_outliers(g, 3, 2.0)
    with pytest.raises(RobustAssumptionError, match="factor > 1"):
        norm_outliers(g, 1, 1.0)
    with pytest.raises(RobustAssumptionError, match=">= 0"):
        norm_outliers(g, -1, 2.0)


@pytest.mark.parametrize("f", [0, 1, 2, 3])
def test_krum_refuses_n_at_most_2f_plus_2_and_runs_at_2f_plus_3(f: int) -> None:
    d = np.random.default_rng(f).normal(size=(2 * f + 3, 4))
    assert len(multi_krum(gram(d), f, 1).accepted) == 1
    with pytest.raises(RobustAssumptionError, match=f"at least {2 * f + 3} updates"):
        krum_scores(gram(d[:-1]), f)


def test_multi_krum_refuses_to_keep_more_than_n_minus_f_or_none() -> None:
    g = gram(np.random.default_rng(0).normal(size=(7, 3)))
    assert len(multi_krum(g, 2, 5).accepted) == 5
    with pytest.raises(RobustAssumptionError, match="m in \\[1, n - f = 5\\]"):
        multi_krum(g, 2, 6)
    with pytest.raises(RobustAssumptionError):
        multi_krum(g, 2, 0)


def test_foolsgold_zeroes_colluding_sybils_and_keeps_diverse_honest_updates() -> None:
    rng = np.random.default_rng(3)
    honest = rng.normal(size=(6, 40))
    sybil = rng.normal(size=40)
    d = np.vstack([honest, sybil + rng.normal(0, 0.01, 40), sybil + rng.normal(0, 0.01, 40)])
    w = foolsgold_weights(gram(d))
    assert w[6] == 0 and w[7] == 0
    assert (w[:6] > 0).all()


def test_foolsgold_refuses_fewer_than_three_or_all_alike() -> None:
    with pytest.raises(RobustAssumptionError, match="at least 3"):
        foolsgold_weights(gram(np.ones((2, 4))))
    with pytest.raises(RobustAssumptionError, match="weight 0"):
        similarity_filter(gram(np.ones((4, 4))), 1)


def test_zero_update_has_zero_cosine_and_no_nan() -> None:
    d = np.vstack([np.zeros(5), np.ones(5), -np.ones(5)])
    cos = cosine_similarities(gram(d))
    assert np.isfinite(cos).all() and (cos[0] == 0).all()


def test_coordinate_median_and_trimmed_mean_values_and_refusals() -> None:
    d = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [100.0, -100.0], [4.0, 40.0]])
    assert np.allclose(coordinate_median(d, 2), [3.0, 20.0])
    assert np.allclose(trimmed_mean(d, 1), [3.0, 20.0])
    assert np.allclose(trimmed_mean(d, 0), d.mean(axis=0))
    with pytest.raises(RobustAssumptionError, match="at least 7"):
        coordinate_median(d, 3)
    with pytest.raises(RobustAssumptionError, match="at least 7"):
        trimmed_mean(d, 3)


def test_gram_rejects_bad_shapes_and_non_finite_entries() -> None:
    with pytest.raises(InvalidUpdate):
        gram(np.zeros(3))
    with pytest.raises(InvalidUpdate, match="square"):
        squared_distances(np.zeros((2, 3)))
    with pytest.raises(InvalidUpdate, match="non-finite"):
        krum_scores(np.full((5, 5), np.nan), 0)


def contributions(d: np.ndarray) -> list[Contribution]:
    return [Contribution(f"p{i}", 10 + i, row.astype(np.float32)) for i, row in enumerate(d)]


@pytest.mark.parametrize("name", ["norm_bound", "krum", "multi_krum", "foolsgold"])
def test_gram_aggregators_average_only_accepted_and_report_by_participant(name: str) -> None:
    d = honest_and_scaled()
    aggregator = make_aggregator(name, RobustSection(max_malicious=2))
    assert isinstance(aggregator, GramDefence)
    result = aggregator.aggregate(np.zeros(d.shape[1], np.float32), contributions(d))
    assert result.decision is not None and result.decision.defence == name
    assert set(result.decision.accepted) | set(result.decision.rejected) == {f"p{i}" for i in range(10)}
    assert {"p8", "p9"} <= set(result.decision.rejected)
    kept = [int(p[1:]) for p in result.decision.accepted]
    weights = np.array([10 + i for i in kept], dtype=np.float64)
    assert np.allclose(result.vector, weights @ d[kept] / weights.sum(), atol=1e-5)
    assert result.decision.scores.keys() == {f"p{i}" for i in range(10)}


@pytest.mark.parametrize("name", ["median", "trimmed_mean"])
def test_coordinate_wise_aggregators_bound_the_scaled_attack_and_flag_no_one(name: str) -> None:
    d = honest_and_scaled()
    result = make_aggregator(name, RobustSection(max_malicious=2)).aggregate(np.zeros(d.shape[1], np.float32),
                                                                              contributions(d))
    assert result.decision is None
    assert np.linalg.norm(result.vector) < 2 * np.linalg.norm(d[:8].mean(axis=0)) + 1


def test_job_config_refused_when_min_participants_below_the_defence_assumption() -> None:
    base = JobConfig()
    for name in AGGREGATORS:
        job = dataclasses.replace(base.job, aggregator=name, participants_per_round=10, min_participants=1)
        config = dataclasses.replace(base, job=job, robust=RobustSection(max_malicious=2))
        if make_aggregator(name, config.robust).minimum_updates() > 1:
            with pytest.raises(ConfigError, match="job.min_participants"):
                job_aggregator(config)
    with pytest.raises(ConfigError, match="job.aggregator: unknown"):
        make_aggregator("bulyan")
