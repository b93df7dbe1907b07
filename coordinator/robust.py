"""Robust-aggregation maths as pure functions: Gram-matrix decisions and coordinate-wise statistics.

Every per-participant *decision* here (norm outliers, Krum / Multi-Krum scores, FoolsGold-like similarity
weights) is a function of the Gram matrix ``G = [<d_i, d_j>]`` of the round's deltas alone:

* ``||d_i|| = sqrt(G_ii)``,
* ``||d_i - d_j||^2 = G_ii + G_jj - 2 G_ij``,
* ``cos(d_i, d_j) = G_ij / sqrt(G_ii G_jj)``.

So the same functions serve both paths: without encryption the coordinator computes ``G = D D^T`` from the
plaintext deltas; with CKKS it computes the Gram entries on ciphertexts, has the key holders decrypt only
those n(n+1)/2 scalars, and calls these very functions, so both paths decide identically on the same updates.

Coordinate-wise median and trimmed mean need every coordinate of every update, not only inner products,
so they cannot be computed from ``G`` and are plaintext-only.

Each function checks its assumption (a bound ``f`` on the number of Byzantine updates among ``n``) and
raises ``RobustAssumptionError`` instead of silently weakening itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedprompt.errors import InvalidUpdate, RobustAssumptionError


@dataclass(frozen=True)
class Decision:
    """Which of the round's ``n`` updates to keep (indices into the Gram matrix), with each one's score.

    ``score_name`` says what the score means; lower-is-better or higher-is-better depends on the defence
    and is stated in its function's docstring.
    """

    accepted: tuple[int, ...]
    scores: tuple[float, ...]
    score_name: str

    @property
    def rejected(self) -> tuple[int, ...]:
        keep = set(self.accepted)
        return tuple(i for i in range(len(self.scores)) if i not in keep)


def gram(deltas: np.ndarray) -> np.ndarray:
    """``G = D D^T`` in float64 for deltas stacked as rows of ``D`` (shape ``(n, d)``)."""
    d = np.asarray(deltas, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] == 0:
        raise InvalidUpdate(f"deltas must be a non-empty (n, d) matrix, got shape {d.shape}")
    return d @ d.T


def _check_gram(g: np.ndarray) -> np.ndarray:
    g = np.asarray(g, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] != g.shape[1] or g.shape[0] == 0:
        raise InvalidUpdate(f"a Gram matrix must be square and non-empty, got shape {g.shape}")
    if not np.isfinite(g).all():
        raise InvalidUpdate("Gram matrix has non-finite entries")
    return g


def norms_from_gram(g: np.ndarray) -> np.ndarray:
    """Euclidean norm of each update: ``sqrt(G_ii)`` (tiny negative diagonals from CKKS noise read as 0)."""
    return np.sqrt(np.maximum(np.diag(_check_gram(g)), 0.0))


def squared_distances(g: np.ndarray) -> np.ndarray:
    """Pairwise ``||d_i - d_j||^2 = G_ii + G_jj - 2 G_ij``; rounding below zero reads as 0, diagonal is 0."""
    g = _check_gram(g)
    diag = np.diag(g)
    dist = np.maximum(diag[:, None] + diag[None, :] - 2.0 * g, 0.0)
    np.fill_diagonal(dist, 0.0)
    return dist


def cosine_similarities(g: np.ndarray) -> np.ndarray:
    """Pairwise cosine ``G_ij / sqrt(G_ii G_jj)``; a zero update (e.g. a free-rider) has similarity 0 to all."""
    g = _check_gram(g)
    n = norms_from_gram(g)
    denom = np.outer(n, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(denom > 0, g / np.where(denom > 0, denom, 1.0), 0.0)
    return np.clip(cos, -1.0, 1.0)


def _require(n: int, needed: int, defence: str, f: int, why: str) -> None:
    if n < needed:
        raise RobustAssumptionError(f"{defence} needs at least {needed} updates for f={f} ({why}); got {n}")


def _check_f(f: int) -> None:
    if f < 0:
        raise RobustAssumptionError(f"the assumed number of malicious updates f must be >= 0, got {f}")


def norm_outliers(g: np.ndarray, f: int, factor: float) -> Decision:
    """Norm bounding as a decision: reject every update whose norm exceeds ``factor`` x the median norm.

    Sun et al., "Can You Really Backdoor Federated Learning?" (2019) show that bounding update norms defeats
    model-replacement (scaled) backdoors (Bagdasaryan et al. 2020).  The bound is relative to the median
    norm, which is an honest update's norm only if honest updates are a strict majority: n >= 2f + 1.
    Score: norm / median norm (lower is better).
    """
    _check_f(f)
    if factor <= 1.0:
        raise RobustAssumptionError(f"norm bounding needs factor > 1 (a bound below the median rejects honest "
                                    f"updates), got {factor}")
    norms = norms_from_gram(g)
    _require(len(norms), 2 * f + 1, "norm bounding", f, "honest majority for the median norm")
    median = float(np.median(norms))
    ratios = norms / median if median > 0 else np.where(norms > 0, np.inf, 0.0)
    accepted = tuple(int(i) for i in np.flatnonzero(ratios <= factor))
    return Decision(accepted, tuple(float(r) for r in ratios), "norm_over_median")


def krum_scores(g: np.ndarray, f: int) -> np.ndarray:
    """Krum score of each update: the sum of its ``n - f - 2`` smallest squared distances to the others.

    Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant Gradient Descent" (NeurIPS
    2017).  The guarantee needs n > 2f + 2, i.e. n >= 2f + 3.  Lower is better.
    """
    _check_f(f)
    dist = squared_distances(g)
    n = dist.shape[0]
    _require(n, 2 * f + 3, "Krum", f, "Blanchard et al. require n > 2f + 2")
    closest = n - f - 2
    others = np.where(np.eye(n, dtype=bool), np.inf, dist)
    return np.sort(others, axis=1)[:, :closest].sum(axis=1)


def multi_krum(g: np.ndarray, f: int, m: int) -> Decision:
    """Multi-Krum (Blanchard et al. 2017): keep the ``m`` updates with the lowest Krum scores (ties by index).

    ``m = 1`` is Krum itself.  ``m`` must lie in ``[1, n - f]``: keeping more than ``n - f`` would keep a
    malicious update for certain.  Score: Krum score (lower is better).
    """
    scores = krum_scores(g, f)
    n = len(scores)
    if not 1 <= m <= n - f:
        raise RobustAssumptionError(f"Multi-Krum keeps m in [1, n - f = {n - f}] updates, got m={m}")
    order = np.argsort(scores, kind="stable")[:m]
    return Decision(tuple(sorted(int(i) for i in order)), tuple(float(s) for s in scores), "krum_score")


def foolsgold_weights(g: np.ndarray) -> np.ndarray:
    """FoolsGold learning-rate weights from pairwise cosine similarities (Fung, Yoon & Beschastnikh, "The
    Limitations of Federated Learning in Sybil Settings", RAID 2020, Algorithm 1).

    Colluding sybils pursuing one poisoning goal send updates that are more similar to each other than
    honest participants' are; FoolsGold lowers the weight of each update by its maximum similarity to
    another, "pardons" honest updates that are merely similar to a sybil, then spreads weights with a logit.
    This variant uses the round's updates rather than each participant's history (the history would need
    cross-round inner products) and no feature-importance weighting.  Needs n >= 3: with two updates
    "most similar to another" says nothing.  Higher is better; 0 means excluded.
    """
    cos = cosine_similarities(g)
    n = cos.shape[0]
    if n < 3:
        raise RobustAssumptionError(f"the FoolsGold-like defence needs at least 3 updates to compare; got {n}")
    cs = cos.copy()
    np.fill_diagonal(cs, -np.inf)
    v = cs.max(axis=1)
    pardoned = cs.copy()
    for i in range(n):
        for j in range(n):
            if i != j and v[j] > v[i] > 0:
                pardoned[i, j] *= v[i] / v[j]
    w = np.clip(1.0 - pardoned.max(axis=1), 0.0, 1.0)
    if w.max() <= 0:
        return np.zeros(n)
    w = w / w.max()
    w[w == 1.0] = 0.99
    with np.errstate(divide="ignore"):
        logit = np.log(w / (1.0 - w)) + 0.5
    return np.clip(np.nan_to_num(logit, neginf=0.0), 0.0, 1.0)


def similarity_filter(g: np.ndarray, f: int) -> Decision:
    """Keep the updates with a positive FoolsGold-like weight (see ``foolsgold_weights``).

    FoolsGold assumes no bound on f; it assumes honest updates are more diverse than colluding ones, which
    cannot be checked.  It refuses when n < 3 or when every update gets weight 0.  ``f`` is accepted for a
    uniform signature and must be >= 0.  Score: weight in [0, 1] (higher is better).
    """
    _check_f(f)
    weights = foolsgold_weights(g)
    accepted = tuple(int(i) for i in np.flatnonzero(weights > 0))
    if not accepted:
        raise RobustAssumptionError("the similarity defence gave every update weight 0 (all updates alike)")
    return Decision(accepted, tuple(float(w) for w in weights), "foolsgold_weight")


def coordinate_median(deltas: np.ndarray, f: int) -> np.ndarray:
    """Coordinate-wise median (Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal
    Statistical Rates", ICML 2018).  Robust while honest updates are a strict majority: n >= 2f + 1.
    Plaintext-only: it needs every coordinate, not just inner products."""
    _check_f(f)
    d = np.asarray(deltas, dtype=np.float64)
    _require(d.shape[0], 2 * f + 1, "coordinate-wise median", f, "honest majority per coordinate")
    return np.median(d, axis=0)


def trimmed_mean(deltas: np.ndarray, f: int) -> np.ndarray:
    """Coordinate-wise trimmed mean (Yin et al. 2018): drop the ``f`` largest and ``f`` smallest values of
    each coordinate and average the rest.  Needs n >= 2f + 1 so something remains.  Plaintext-only."""
    _check_f(f)
    d = np.asarray(deltas, dtype=np.float64)
    n = d.shape[0]
    _require(n, 2 * f + 1, "trimmed mean", f, "2f values trimmed per coordinate, at least one kept")
    return np.sort(d, axis=0)[f : n - f].mean(axis=0)
