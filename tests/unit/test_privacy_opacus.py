"""fedprompt.privacy against Opacus's own accountants as the reference: the same epsilon (RDP and PRV), the same
calibrated noise and the same merged history.  Opacus imports torch, so these live apart from the torch-free
tests of the accountant (``test_privacy_accounting``)."""

from __future__ import annotations

import itertools

import pytest
from opacus.accountants import PRVAccountant as OpacusPRV
from opacus.accountants import RDPAccountant as OpacusRDP
from opacus.accountants.utils import get_noise_multiplier

from fedprompt.privacy import PRV_EPS_ERROR, PRVAccountant, RDPAccountant, calibrate_noise, create_accountant
from tests.support import MIXED_HISTORY, with_history

pytestmark = [pytest.mark.filterwarnings("ignore:Optimal order is the"),
              pytest.mark.filterwarnings("ignore::RuntimeWarning:opacus")]


@pytest.mark.parametrize(("sigma", "q"), itertools.product([0.6, 1.1, 3.0], [0.001, 0.02, 0.3, 1.0]))
def test_rdp_epsilon_matches_opacus(sigma: float, q: float) -> None:
    """Integer orders are exact sums; fractional ones are series that Opacus stops at terms below e^-30 and we at
    terms below 1e-16 of the sum, so the two agree to ~1e-11 relative."""
    for steps, delta in itertools.product([1, 50, 5000], [1e-3, 1e-6]):
        ours = with_history(RDPAccountant(), [(sigma, q, steps)]).get_epsilon(delta)
        reference = with_history(OpacusRDP(), [(sigma, q, steps)]).get_epsilon(delta)
        assert ours == pytest.approx(reference, rel=1e-9), (steps, delta)


def test_rdp_epsilon_of_a_mixed_history_matches_opacus() -> None:
    ours = with_history(RDPAccountant(), MIXED_HISTORY).get_epsilon(1e-4)
    assert ours == pytest.approx(with_history(OpacusRDP(), MIXED_HISTORY).get_epsilon(1e-4), rel=1e-12)


@pytest.mark.parametrize(("sigma", "q", "steps"), [
    (0.8, 0.01, 1), (0.8, 0.01, 300), (0.8, 0.1, 30), (1.0, 0.5, 1), (1.0, 0.5, 30), (2.0, 0.1, 1000),
    (2.0, 1.0, 10), (5.0, 0.001, 1000),
])
def test_prv_epsilon_matches_opacus_well_inside_eps_error(sigma: float, q: float, steps: int) -> None:
    """Both are the Gopi et al. upper bound on the same grid; they differ only in how the truncated PRV's mean is
    integrated, by far less than the ``eps_error`` (0.01) either guarantees."""
    for delta in (1e-3, 1e-5):
        ours = with_history(PRVAccountant(), [(sigma, q, steps)]).get_epsilon(delta)
        reference = with_history(OpacusPRV(), [(sigma, q, steps)]).get_epsilon(delta, eps_error=PRV_EPS_ERROR)
        assert abs(ours - reference) <= PRV_EPS_ERROR
        assert ours == pytest.approx(reference, rel=1e-7), delta


def test_prv_epsilon_of_a_mixed_history_matches_opacus_and_is_tighter_than_rdp() -> None:
    """Opacus composes different steps by truncated linear convolution, we by the paper's circular one."""
    ours = with_history(PRVAccountant(), MIXED_HISTORY).get_epsilon(1e-4)
    assert ours == pytest.approx(with_history(OpacusPRV(), MIXED_HISTORY).get_epsilon(1e-4), rel=1e-7)
    assert ours < with_history(RDPAccountant(), MIXED_HISTORY).get_epsilon(1e-4)


@pytest.mark.parametrize(("mechanism", "target", "delta", "q", "steps"), [
    ("rdp", 8.0, 1e-5, 0.01, 1000), ("prv", 3.0, 1 / 400, 0.1, 6),  # rdp at 3.0, 1/400: tests/unit/test_dp.py
])
def test_calibrated_noise_is_opacus_and_reaches_the_target(mechanism: str, target: float, delta: float, q: float,
                                                           steps: int) -> None:
    sigma = calibrate_noise(target_epsilon=target, target_delta=delta, sample_rate=q, steps=steps,
                            mechanism=mechanism, key="dp.epsilon")
    extra = {"eps_error": PRV_EPS_ERROR} if mechanism == "prv" else {}
    assert sigma == get_noise_multiplier(target_epsilon=target, target_delta=delta, sample_rate=q, steps=steps,
                                         accountant=mechanism, **extra)
    spent = with_history(create_accountant(mechanism), [(sigma, q, steps)]).get_epsilon(delta)
    assert target - 0.01 <= spent <= target


@pytest.mark.parametrize("mechanism", ["rdp", "prv"])
def test_steps_merge_as_in_opacus_and_a_trial_takes_none(mechanism: str) -> None:
    ours, reference = create_accountant(mechanism), {"rdp": OpacusRDP, "prv": OpacusPRV}[mechanism]()
    for sigma, q in [(1.0, 0.1), (1.0, 0.1), (1.0, 0.2), (1.1, 0.2), (1.1, 0.2), (1.1, 0.2), (1.0, 0.1)]:
        ours.step(noise_multiplier=sigma, sample_rate=q)
        reference.step(noise_multiplier=sigma, sample_rate=q)
    assert ours.history == reference.history == [(1.0, 0.1, 2), (1.0, 0.2, 1), (1.1, 0.2, 3), (1.0, 0.1, 1)]
    trial = ours.epsilon_after(4, noise_multiplier=1.0, sample_rate=0.1, delta=1e-5)
    assert ours.history[-1] == (1.0, 0.1, 1), "a trial takes no step"
    for _ in range(4):
        ours.step(noise_multiplier=1.0, sample_rate=0.1)
    assert trial == ours.get_epsilon(1e-5) > 0
