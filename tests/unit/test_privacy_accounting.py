"""fedprompt.privacy, the accountant both ledgers use: bounds against the exact epsilon of the Gaussian mechanism,
the registry, ``state_dict`` and refusals, without Opacus or torch (the Opacus reference is ``test_privacy_opacus``)."""

from __future__ import annotations

import itertools
import json
import math

import pytest
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
from tests.support import MIXED_HISTORY, with_history

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the")


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


def test_an_unreachable_target_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^dp\.epsilon: 0\.01 is unreachable for 1000000 steps"):
        calibrate_noise(target_epsilon=0.01, target_delta=1e-5, sample_rate=1.0, steps=1_000_000, mechanism="rdp",
                        key="dp.epsilon")


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
    accountant = with_history(create_accountant(mechanism), MIXED_HISTORY)
    state = accountant.state_dict()
    assert state == {"mechanism": mechanism, "history": [list(entry) for entry in MIXED_HISTORY]}
    restored = create_accountant(mechanism)
    restored.load_json(json.dumps(state))
    assert restored.history == MIXED_HISTORY and restored.get_epsilon(1e-4) == accountant.get_epsilon(1e-4)
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
