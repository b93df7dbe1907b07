"""Cohorts of the expert prompt level: who belongs where, given by the admin or discovered from updates.

Discovery clusters participants by the similarity of their updates, as clustered federated learning does
(Sattler, Müller & Samek, "Clustered Federated Learning: Model-Agnostic Distributed Multitask Optimization
under Privacy Constraints", IEEE TNNLS 2021, split participants by the cosine similarity of their updates).
``discover_cohorts`` sees only the Gram matrix ``G = [<d_i, d_j>]`` of the updates, the same input as the
robust defences (``coordinator.robust``): in plaintext jobs the coordinator computes it from the deltas;
in encrypted jobs it computes it on the CKKS ciphertexts and two key holders decrypt only its scalars
(``coordinator.hegram``, as for the encrypted Gram defences), and the same function clusters them unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np

from fedprompt.config import LevelsSection
from fedprompt.coordinator.robust import cosine_similarities
from fedprompt.errors import ConfigError, InvalidUpdate

#: Members not (yet) in any cohort share this one: everyone before discovery, and in admin mode anyone the
#: admin did not place.  Cohort names in config start with a letter or digit, so it never collides.
DEFAULT_COHORT = "_default"


def discover_cohorts(g: np.ndarray, k: int) -> tuple[int, ...]:
    """Cluster ``n`` updates into ``k`` cohorts from their Gram matrix alone; returns a cohort index per row.

    Average-linkage agglomerative clustering on cosine similarity ``G_ij / sqrt(G_ii G_jj)``: start from
    singletons and repeatedly merge the two clusters with the highest mean pairwise similarity until ``k``
    remain.  Deterministic (ties by lowest indices); cohorts are numbered in order of their first member.
    """
    cos = cosine_similarities(g)
    n = cos.shape[0]
    if not 1 <= k <= n:
        raise InvalidUpdate(f"cannot find {k} cohorts among {n} updates")
    clusters = [[i] for i in range(n)]
    while len(clusters) > k:
        best, pair = -np.inf, (0, 1)
        for a in range(len(clusters)):
            for b in range(a + 1, len(clusters)):
                score = float(cos[np.ix_(clusters[a], clusters[b])].mean())
                if score > best:
                    best, pair = score, (a, b)
        a, b = pair
        clusters[a] = sorted(clusters[a] + clusters.pop(b))
    clusters.sort(key=min)
    labels = [0] * n
    for index, members in enumerate(clusters):
        for i in members:
            labels[i] = index
    return tuple(labels)


class CohortPlan:
    """Member -> cohort for one job: the admin's assignment, or the discovered one once it exists."""

    def __init__(self, levels: LevelsSection) -> None:
        self.levels = levels
        self.assigned = {m: c.name for c in levels.cohorts for m in c.members}

    @staticmethod
    def check(levels: LevelsSection) -> None:
        """Job-creation check: admin-given cohorts must exist when there is an expert level."""
        if levels.enabled and levels.expert_tokens and levels.cohorts_from == "admin" and not levels.cohorts:
            raise ConfigError('levels.cohorts: cohorts_from = "admin" with an expert level needs at least one '
                              '[[levels.cohorts]] table (name and members), or use cohorts_from = "discover"')

    @property
    def discovers(self) -> bool:
        return self.levels.expert_tokens > 0 and self.levels.cohorts_from == "discover"

    def cohort_of(self, participant_id: str) -> str:
        return self.assigned.get(participant_id, DEFAULT_COHORT)

    def names(self) -> list[str]:
        return sorted({DEFAULT_COHORT, *self.assigned.values()})

    def too_few(self, updates: int) -> str:
        """Why discovery cannot run on a round with ``updates`` updates, or "" if it can."""
        k = self.levels.num_cohorts
        return f"too few updates ({updates}) for {k} cohorts" if updates < k else ""

    def discover(self, participant_ids: list[str], g: np.ndarray) -> dict[str, str]:
        """Assign ``participant_ids`` (rows of ``g``) to ``levels.num_cohorts`` discovered cohorts: a proposal,
        in force once the version carrying it is stored (``load_json``), so that an attempt refused after its
        close (an encrypted aggregate failing its check) leaves the plan as it was and the retry discovers."""
        labels = discover_cohorts(g, self.levels.num_cohorts)
        return {pid: f"cohort-{label + 1}" for pid, label in zip(participant_ids, labels, strict=True)}

    def to_json(self, found: Mapping[str, str] | None = None) -> bytes:
        """The assignment with ``found`` (this attempt's discovery) on top, as the attempt's version stores it."""
        return json.dumps({**self.assigned, **(found or {})}, sort_keys=True).encode()

    def load_json(self, data: bytes) -> None:
        """Take the assignment a stored global version carries (when it is stored, and after a restart)."""
        try:
            assigned = json.loads(data)
        except ValueError as exc:
            raise InvalidUpdate(f"stored cohort assignment is not JSON: {exc}") from exc
        if not isinstance(assigned, dict) or not all(isinstance(v, str) for v in assigned.values()):
            raise InvalidUpdate("stored cohort assignment must map participants to cohort names")
        self.assigned = dict(assigned)
