"""Privacy accounting helpers shared by participants (record level) and the coordinator (participant level).

Both sides use Opacus's accountants unchanged (RDP: Mironov, "Renyi Differential Privacy", CSF 2017; PRV:
Gopi, Lee and Wutschitz, "Numerical Composition of Differential Privacy", NeurIPS 2021); these helpers only
fix how epsilon is read and how a step is tried before it is taken.
"""

from __future__ import annotations

import copy

from opacus.accountants import IAccountant

PRV_EPS_ERROR = 0.01  # PRV accountant's epsilon discretisation error (Opacus's default)


def accountant_kwargs(mechanism: str) -> dict[str, float]:
    """Extra keyword arguments Opacus needs to read epsilon from this kind of accountant."""
    return {"eps_error": PRV_EPS_ERROR} if mechanism == "prv" else {}


def epsilon_of(accountant: IAccountant, delta: float) -> float:
    """Epsilon spent by ``accountant`` at ``delta`` (0 before any step)."""
    if not accountant.history:
        return 0.0
    return float(accountant.get_epsilon(delta, **accountant_kwargs(accountant.mechanism())))


def epsilon_after(accountant: IAccountant, steps: int, noise_multiplier: float, sample_rate: float,
                  delta: float) -> float:
    """Epsilon if ``steps`` more steps were taken, without taking them."""
    trial = copy.deepcopy(accountant)
    for _ in range(steps):
        trial.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    return epsilon_of(trial, delta)
