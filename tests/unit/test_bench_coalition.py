"""The attacks of ``bench threshold`` (``app.bench.coalition``), on real keys and ciphertexts: the harness recovers
an update where the material allows it (single key; t sites) and not where it does not (t - 1 sites), a dropout
of n - t members still decrypts, and every key substitution is refused while the genuine statement verifies."""

from __future__ import annotations

import numpy as np
import pytest

from fedprompt.app.bench.coalition import (
    collusion_and_dropout,
    correlation,
    key_substitution,
    single_key_attack,
    threshold_attack,
)
from fedprompt.crypto import threshold_seeded
from fedprompt.crypto.threshold import ThresholdParams
from fedprompt.crypto.threshold_costs import Keyed, keygen

SIZE = 3000


@pytest.fixture(scope="module")
def keyed() -> Keyed:
    return keygen(ThresholdParams(members=5))  # t = 3


def test_correlation_of_a_constant_or_broken_guess_is_zero() -> None:
    truth = np.random.default_rng(0).normal(size=100)
    assert correlation(np.zeros(100), truth) == 0.0
    assert correlation(np.full(100, np.nan), truth) == 0.0
    assert correlation(2 * truth + 1, truth) == pytest.approx(1.0)


def test_the_single_key_coalition_of_coordinator_and_one_site_recovers_the_update() -> None:
    assert single_key_attack(SIZE) > 0.999


def test_t_minus_1_sites_recover_nothing_of_an_honest_upload_and_t_sites_recover_it(keyed: Keyed) -> None:
    update = np.random.default_rng(1).normal(0, 0.1, SIZE)
    upload = threshold_seeded.encrypt(keyed.context, keyed.members[4], update * 3, 3.0,
                                      threshold_seeded.UploadRound(keyed.job_seed, round=1))
    below = threshold_attack(keyed, upload, SIZE, honest=5, coalition=[1, 2], update=update)
    assert len(below) == 4 and all(abs(c) < 0.06 for c in below.values()), below
    at_t = threshold_attack(keyed, upload, SIZE, honest=5, coalition=[1, 2, 3], update=update)
    assert at_t["Lagrange interpolation of the sub-shares of the honest secret"] > 0.999


def test_the_round_completes_with_n_minus_t_dropped_and_the_coalition_learns_only_the_aggregate(
        keyed: Keyed) -> None:
    result = collusion_and_dropout(keyed, SIZE, round=2)
    assert (result["dropout"]["dropped"], result["dropout"]["completed"]) == (2, True)
    assert all(abs(c) < 0.06 for c in result["attacks"].values())
    assert max(result["control_t_sites"].values()) > 0.999
    # the sum minus the coalition's own updates: the honest update is in it, hidden by two other honest ones
    assert 0.0 < result["aggregate_floor"] < 0.95


def test_every_key_substitution_by_the_relay_is_refused(keyed: Keyed) -> None:
    result = key_substitution(keyed)
    for purpose in ("exchange", "key-share"):
        assert result.pop(f"{purpose}: the genuine statement verifies") is True
    assert len(result) == 10 and all(result.values()), result
