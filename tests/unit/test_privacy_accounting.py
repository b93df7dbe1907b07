"""fedprompt.privacy, the accountant both ledgers use, against Opacus's own accountants as the reference."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import pytest
from opacus.accountants import PRVAccountant as OpacusPRV
from opacus.accountants import RDPAccountant as OpacusRDP
from opacus.accountants.utils import get_noise_multiplier
from scipy import optimize, special

from fedprompt import config
from fedprompt.errors import ConfigError, FedPromptError
from fedprompt.privacy import (
    ACCOUNTANTS,
    PRV_EPS_ERROR,
    PRVAccountant,
    RDPAccountant,
    calibrate_noise,
    create_accountant,
)

pytestmark = [pytest.mark.filterwarnings("ignore:Optimal order is the"),
              pytest.mark.filterwarnings("ignore::RuntimeWarning:opacus")]

HETEROGENEOUS = [(1.0, 0.1, 5), (1.2, 0.05, 7), (0.9, 0.2, 3)]


def with_history(accountant: Any, history: list[tuple[float, float, int]]) -> Any:
    """``accountant`` (ours or Opacus's) holding ``history``, as Opacus's own noise calibration sets it."""
    accountant.history = list(history)
    return accountant


@pytest.mark.parametrize(("sigma", "q"), itertools.product([0.6, 1.1, 3.0], [0.001, 0.02, 0.3, 1.0]))
def test_rdp_epsilon_matches_opacus(sigma: float, q: float) -> None:
    """Integer orders are exact sums; fractional ones are series that Opacus stops at terms below e^-30 and we at
    terms below 1e-16 of the sum, so the two agree to ~1e-11 relative."""
    for steps, delta in itertools.product([1, 50, 5000], [1e-3, 1e-6]):
        ours = with_history(RDPAccountant(), [(sigma, q, steps)]).get_epsilon(delta)
        reference = with_history(OpacusRDP(), [(sigma, q, steps)]).get_epsilon(delta)
        assert ours == pytest.approx(reference, rel=1e-9), (steps, delta)


def test_rdp_epsilon_of_a_mixed_history_matches_opacus() -> None:
    ours = with_history(RDPAccountant(), HETEROGENEOUS).get_epsilon(1e-4)
    assert ours == pytest.approx(with_history(OpacusRDP(), HETEROGENEOUS).get_epsilon(1e-4), rel=1e-12)


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
    ours = with_history(PRVAccountant(), HETEROGENEOUS).get_epsilon(1e-4)
    assert ours == pytest.approx(with_history(OpacusPRV(), HETEROGENEOUS).get_epsilon(1e-4), rel=1e-7)
    assert ours < with_history(RDPAccountant(), HETEROGENEOUS).get_epsilon(1e-4)


def gaussian_epsilon(sigma: float, steps: int, delta: float) -> float:
    """Exact epsilon of ``steps`` Gaussian mechanisms (no sampling): their privacy loss is N(mu^2/2, mu^2) with
    mu = sqrt(steps) / sigma, so delta(eps) = Phi(mu/2 - eps/mu) - e^eps Phi(-mu/2 - eps/mu) (Balle and Wang,
    "Improving the Gaussian Mechanism for Differential Privacy", ICML 2018, Theorem 8)."""
    mu = math.sqrt(steps) / sigma
    return float(optimize.brentq(lambda eps: special.ndtr(mu / 2 - eps / mu) - math.exp(eps) * special.ndtr(
        -mu / 2 - eps / mu) - delta, 0.0, 600.0, xtol=1e-13))


@pytest.mark.parametrize(("sigma", "steps"), [*itertools.product([0.8, 2.0], [1, 10, 100]), (0.5, 100)])
def test_both_bound_the_exact_epsilon_of_the_gaussian_mechanism_and_prv_within_its_error(sigma: float,
                                                                                         steps: int) -> None:
    """A reference that is not Opacus: with q = 1 the exact curve is known.  PRV reports its estimate at
    delta - delta_error plus eps_error, so it lies between the exact epsilon at delta and the exact epsilon at
    delta - 2 delta_error plus 2 eps_error (Gopi et al. 2021); RDP is an upper bound, looser.  At sigma 0.5 the
    grid is over 500 wide, so its tail sums run in more than one block."""
    for delta in (1e-3, 1e-6):
        exact = gaussian_epsilon(sigma, steps, delta)
        prv = with_history(PRVAccountant(), [(sigma, 1.0, steps)]).get_epsilon(delta)
        assert exact <= prv <= gaussian_epsilon(sigma, steps, delta * (1 - 2 / 1000)) + 2 * PRV_EPS_ERROR
        assert prv < with_history(RDPAccountant(), [(sigma, 1.0, steps)]).get_epsilon(delta)


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


def test_an_unreachable_target_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^dp\.epsilon: 0\.01 is unreachable for 1000000 steps"):
        calibrate_noise(target_epsilon=0.01, target_delta=1e-5, sample_rate=1.0, steps=1_000_000, mechanism="rdp",
                        key="dp.epsilon")


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


def test_no_steps_spend_nothing_and_no_noise_spends_everything() -> None:
    for mechanism in ACCOUNTANTS:
        accountant = create_accountant(mechanism)
        assert accountant.get_epsilon(1e-5) == 0.0
        assert accountant.epsilon_after(1, noise_multiplier=0.0, sample_rate=0.5, delta=1e-5) == math.inf


def test_the_registry_holds_exactly_the_configurable_mechanisms() -> None:
    assert tuple(ACCOUNTANTS) == config.ACCOUNTANTS
    assert all(create_accountant(name).mechanism() == name for name in config.ACCOUNTANTS)
    with pytest.raises(ConfigError, match="^dp.accountant: must be one of rdp, prv, got 'gdp'"):
        create_accountant("gdp")


@pytest.mark.parametrize("mechanism", ["rdp", "prv"])
def test_state_dict_round_trips_through_json(mechanism: str) -> None:
    accountant = with_history(create_accountant(mechanism), HETEROGENEOUS)
    state = accountant.state_dict()
    assert state == {"mechanism": mechanism, "history": [list(entry) for entry in HETEROGENEOUS]}
    restored = create_accountant(mechanism)
    restored.load_json(json.dumps(state))
    assert restored.history == HETEROGENEOUS and restored.get_epsilon(1e-4) == accountant.get_epsilon(1e-4)
    assert restored.to_json() == accountant.to_json()


@pytest.mark.parametrize(("text", "match"), [
    ("", "not valid JSON"),
    ("[1, 2]", "expected exactly the keys"),
    ('{"history": []}', "expected exactly the keys"),
    ('{"mechanism": "rdp", "history": [], "epsilon": 0}', "expected exactly the keys"),
    ('{"mechanism": "prv", "history": []}', "mechanism 'prv' cannot be loaded into a 'rdp' accountant"),
    ('{"mechanism": "rdp", "history": "garbage"}', "history must be a list"),
    ('{"mechanism": "rdp", "history": [[1.0, 0.1]]}', "history must be a list"),
    ('{"mechanism": "rdp", "history": [[-1.0, 0.1, 1]]}', r"history\[0\]: noise_multiplier must be finite and >= 0"),
    ('{"mechanism": "rdp", "history": [[NaN, 0.1, 1]]}', r"history\[0\]: noise_multiplier must be finite and >= 0"),
    ('{"mechanism": "rdp", "history": [["1.0", 0.1, 1]]}', r"history\[0\]: noise_multiplier must be finite and >= 0"),
    ('{"mechanism": "rdp", "history": [[1.0, 1.5, 1]]}', r"history\[0\]: sample_rate must be in \[0, 1\]"),
    ('{"mechanism": "rdp", "history": [[1.0, 0.1, 0]]}', r"history\[0\]: num_steps must be an integer >= 1"),
    ('{"mechanism": "rdp", "history": [[1.0, 0.1, 2.0]]}', r"history\[0\]: num_steps must be an integer >= 1"),
    ('{"mechanism": "rdp", "history": [[1.0, 0.1, true]]}', r"history\[0\]: num_steps must be an integer >= 1"),
])
def test_a_malformed_state_is_refused_and_the_history_kept(text: str, match: str) -> None:
    accountant = with_history(RDPAccountant(), [(1.0, 0.1, 3)])
    with pytest.raises(FedPromptError, match=f"^privacy accountant state: {match}"):
        accountant.load_json(text)
    assert accountant.history == [(1.0, 0.1, 3)], "a refused state changes nothing"


@pytest.mark.parametrize(("sigma", "q", "match"), [(-0.5, 0.1, "noise_multiplier"), (math.inf, 0.1, "noise_multiplier"),
                                                   (1.0, -0.1, "sample_rate"), (1.0, 1.01, "sample_rate")])
def test_a_step_out_of_range_is_refused(sigma: float, q: float, match: str) -> None:
    with pytest.raises(FedPromptError, match=f"^privacy accountant: {match}"):
        RDPAccountant().step(noise_multiplier=sigma, sample_rate=q)
