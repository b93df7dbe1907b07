"""Privacy accounting for both ledgers: a site's record-level DP-SGD and the coordinator's participant-level rounds.

One accountant interface (Opacus's ``IAccountant`` shape: keyword-only ``step``, ``get_epsilon(delta)``, a
history of ``(noise_multiplier, sample_rate, num_steps)``, validated ``state_dict``/``load_state_dict`` as the
one persistence format), two mechanisms chosen by name (``dp.accountant``), and noise calibration.  Both
analyse the Poisson-sampled Gaussian mechanism (sensitivity 1, noise ``noise_multiplier``, sampling rate q):

* ``rdp``: its Rényi DP at a grid of orders (Mironov, "Rényi Differential Privacy", CSF 2017; Mironov, Talwar
  and Zhang, "Rényi Differential Privacy of the Sampled Gaussian Mechanism", arXiv:1908.10530, 2019), added
  over steps and converted to (epsilon, delta) with Balle et al., "Hypothesis Testing Interpretations and Rényi
  Differential Privacy", AISTATS 2020, Theorem 21 (Opacus's conversion, so the numbers agree).
* ``prv``: numerical composition of privacy loss random variables (Gopi, Lee and Wutschitz, "Numerical
  Composition of Differential Privacy", NeurIPS 2021): each step's PRV is truncated, discretised on one grid
  (mean-preserving), composed by FFT, and epsilon is read off exactly from the discrete result; the answer is
  the paper's upper bound: never below the true epsilon, and within 2 ``eps_error`` of the true epsilon at
  delta - 2 ``delta_error``.

Pure numpy and scipy, never torch or opacus: a coordinator accounts without loading the ML stack.
"""

from __future__ import annotations

import abc
import functools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from scipy import integrate, special
from scipy.fft import irfft, rfft

from fedprompt.errors import ConfigError, FedPromptError

#: One history entry, as in Opacus: (noise_multiplier, sample_rate, num_steps).
Step = tuple[float, float, int]

#: Rényi orders searched for the best conversion (Opacus's default grid, so epsilons agree with it).
RDP_ORDERS: tuple[float, ...] = tuple(1 + x / 10 for x in range(1, 100)) + tuple(float(a) for a in range(12, 64))
PRV_EPS_ERROR = 0.01  # PRV's epsilon discretisation error (Opacus's default)
MAX_NOISE_MULTIPLIER = 1e6  # calibration gives up above this
_CHUNK = 256  # terms of the fractional-order series evaluated per vectorised pass


class NoisyOptimizer(Protocol):
    """What a step hook reads from Opacus's ``DPOptimizer``."""

    noise_multiplier: float

    @property
    def accumulated_iterations(self) -> int: ...


# --- RDP of the sampled Gaussian mechanism -------------------------------------------------------------------

def _log_a_integer(q: float, sigma: float, alpha: int) -> float:
    """log A_alpha for integer alpha: the binomial expansion of E_{mu0}[((1-q) + q mu1/mu0)^alpha], whose k-th
    term is C(alpha, k) (1-q)^(alpha-k) q^k exp((k^2 - k) / (2 sigma^2)) (Mironov et al. 2019, Section 3.3)."""
    k = np.arange(alpha + 1, dtype=np.float64)
    log_binom = special.gammaln(alpha + 1) - special.gammaln(k + 1) - special.gammaln(alpha - k + 1)
    terms = log_binom + k * math.log(q) + (alpha - k) * math.log1p(-q) + (k * k - k) / (2 * sigma**2)
    return float(special.logsumexp(terms))


def _log_a_fractional(q: float, sigma: float, alpha: float) -> float:
    """log A_alpha for fractional alpha (Mironov et al. 2019, Section 3.3): the integral is split at z0, where
    (1-q) mu0 = q mu1, and each side expanded as a convergent binomial series.  Term i of the left side is
    C(alpha, i) q^i (1-q)^(alpha-i) exp((i^2 - i) / (2 sigma^2)) Phi((z0 - i) / sigma); the right side swaps
    the roles of i and j = alpha - i.  Terms are summed until they fall below double precision of the sum."""
    z0 = sigma**2 * (math.log1p(-q) - math.log(q)) + 0.5
    log_q, log_1q, two_var = math.log(q), math.log1p(-q), 2 * sigma**2
    log_a, sign, start = -math.inf, 1.0, 0
    while True:
        i = np.arange(start, start + _CHUNK, dtype=np.float64)
        j = alpha - i
        log_binom = special.gammaln(alpha + 1) - special.gammaln(i + 1) - special.gammaln(j + 1)
        signs = special.gammasgn(j + 1)
        left = log_binom + i * log_q + j * log_1q + (i * i - i) / two_var + special.log_ndtr((z0 - i) / sigma)
        right = log_binom + j * log_q + i * log_1q + (j * j - j) / two_var + special.log_ndtr((j - z0) / sigma)
        terms = np.concatenate(([log_a], left, right))
        weights = np.concatenate(([sign], signs, signs))
        log_a, sign = special.logsumexp(terms, b=weights, return_sign=True)
        start += _CHUNK
        if max(left.max(), right.max()) < log_a - 37 and start > alpha:  # exp(-37) < 1e-16: the rest is noise
            return float(log_a)


def rdp_sampled_gaussian(q: float, sigma: float, orders: Sequence[float] = RDP_ORDERS) -> np.ndarray:
    """Rényi DP of one step of the Poisson-sampled Gaussian mechanism at each order (Mironov et al. 2019)."""
    if q == 0:
        return np.zeros(len(orders))
    if sigma == 0:
        return np.full(len(orders), math.inf)
    alphas = np.asarray(orders, dtype=np.float64)
    if q == 1:
        return alphas / (2 * sigma**2)  # the plain Gaussian mechanism's RDP (Mironov 2017)
    return np.array([(_log_a_integer(q, sigma, int(a)) if float(a).is_integer() else _log_a_fractional(q, sigma, a))
                     / (a - 1) for a in orders])


def rdp_to_epsilon(rdp: np.ndarray, delta: float, orders: Sequence[float] = RDP_ORDERS) -> float:
    """The smallest epsilon over the orders by Balle et al. 2020, Theorem 21:
    eps = rdp(alpha) + log((alpha - 1) / alpha) - (log delta + log alpha) / (alpha - 1)."""
    alphas = np.asarray(orders, dtype=np.float64)
    eps = rdp + np.log((alphas - 1) / alphas) - (math.log(delta) + np.log(alphas)) / (alphas - 1)
    return math.inf if np.isnan(eps).all() else float(np.nanmin(eps))


@functools.lru_cache(maxsize=1024)
def _rdp_per_step(q: float, sigma: float) -> np.ndarray:
    """``rdp_sampled_gaussian`` at ``RDP_ORDERS``, kept: ledgers ask again for the same steps every round."""
    curve = rdp_sampled_gaussian(q, sigma)
    curve.flags.writeable = False
    return curve


def rdp_epsilon(history: Sequence[Step], delta: float) -> float:
    """Epsilon at ``delta`` of a history, composed additively in RDP."""
    total = sum((n * _rdp_per_step(q, sigma) for sigma, q, n in history), np.zeros(len(RDP_ORDERS)))
    return rdp_to_epsilon(total, delta)


# --- PRV of the Poisson-sampled Gaussian mechanism -----------------------------------------------------------

def _prv_z(t: np.ndarray, q: float) -> np.ndarray:
    """z = log((e^t - (1 - q)) / q), computed stably; 0 where t <= log(1 - q), below the PRV's support."""
    if q == 1:
        return t
    above = t > math.log1p(-q)
    safe = np.where(above, t, 0.0)
    return np.where(above, safe + np.log1p(-(1 - q) * np.exp(-safe)) - math.log(q), 0.0)


def _prv_cdf(t: np.ndarray, q: float, sigma: float) -> np.ndarray:
    """CDF of the PRV Y = log(P(w) / Q(w)), w ~ P, for P = (1-q) N(0, sigma^2) + q N(1, sigma^2) and
    Q = N(0, sigma^2) (Gopi et al. 2021, Appendix B, Propositions B1 and B4).  Y <= t iff w <= sigma^2 z + 1/2 with
    z = log((e^t - 1 + q) / q), so the CDF is (1-q) Phi(sigma z + 1/(2 sigma)) + q Phi(sigma z - 1/(2 sigma))."""
    z = _prv_z(t, q)
    cdf = (1 - q) * special.ndtr(sigma * z + 1 / (2 * sigma)) + q * special.ndtr(sigma * z - 1 / (2 * sigma))
    return cdf if q == 1 else np.where(t > math.log1p(-q), cdf, 0.0)


def _prv_truncated_mean(q: float, sigma: float, t_min: float, t_max: float) -> float:
    """E[Y | t_min < Y <= t_max], integrated over the noise sample w (Y is increasing in w)."""
    def w_of(t: float) -> float:
        if q < 1 and t <= math.log1p(-q):
            return -math.inf
        return sigma**2 * float(_prv_z(np.array(t), q)) + 0.5

    def integrand(w: float) -> float:
        density = (1 - q) * math.exp(-w * w / (2 * sigma**2)) + q * math.exp(-(w - 1) ** 2 / (2 * sigma**2))
        loss = float(np.logaddexp(math.log1p(-q) if q < 1 else -math.inf, math.log(q) + (2 * w - 1) / (2 * sigma**2)))
        return loss * density / (sigma * math.sqrt(2 * math.pi))

    low, high = w_of(t_min), w_of(t_max)
    edges = [low, *(x for x in (-8 * sigma, 0.5, 1 + 8 * sigma) if low < x < high), high]
    total = sum(integrate.quad(integrand, a, b, epsabs=0, epsrel=1e-13, limit=500)[0]
                for a, b in zip(edges[:-1], edges[1:]))
    mass = float(np.diff(_prv_cdf(np.array([t_min, t_max]), q, sigma))[0])
    return total / mass


def prv_epsilon(history: Sequence[Step], delta: float, eps_error: float = PRV_EPS_ERROR,
                delta_error: float | None = None) -> float:
    """Upper bound on epsilon at ``delta`` by numerical PRV composition (Gopi et al. 2021: truncate, discretise,
    compose by FFT): the estimate at delta - ``delta_error`` plus ``eps_error``, which the paper's error bound
    puts between the true epsilon at delta and 2 ``eps_error`` above the true epsilon at delta - 2
    ``delta_error`` (default delta / 1000).  Domain and mesh follow the paper's Remark 5.6 as its reference implementation
    (and Opacus) apply it: half-width L = 3 + the RDP epsilon of the whole history at delta_error / 4 or of a
    single step at delta_error / (8 k), mesh h = eps_error / sqrt(k log(12 / delta_error) / 2)."""
    steps = [(sigma, q, n) for sigma, q, n in history if q > 0]
    if not steps:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in steps):
        return math.inf
    delta_error = delta / 1000 if delta_error is None else delta_error
    k = sum(n for _, _, n in steps)
    half = max([rdp_epsilon(steps, delta_error / 4), eps_error]
               + [rdp_epsilon([(sigma, q, 1)], delta_error / (8 * k)) for sigma, q, _ in steps]) + 3
    h = eps_error / math.sqrt(k * math.log(12 / delta_error) / 2)
    centre = math.ceil(half / h)
    size = 2 * centre + 2  # [-L, L] rounded out to the mesh plus one cell: Opacus's grid, so both discretise alike
    if np.finfo(np.float64).eps * size > delta - delta_error:
        raise FedPromptError(f"privacy accountant: delta {delta:g} is too small for PRV accounting on {size} points")
    grid = (np.arange(size) - centre) * h
    spectrum = np.ones(size // 2 + 1, dtype=np.complex128)
    shift = 0.0
    for sigma, q, n in steps:
        pmf, mean_shift = _discretise(q, sigma, grid, h)
        spectrum *= rfft(pmf) ** n
        shift += n * mean_shift
    # Circular convolution (the paper's sum modulo 2L); a sum of k grid values lands (k - 1) centre cells up.
    pmf = np.roll(irfft(spectrum, size), -(k - 1) * centre)
    return _discrete_epsilon(pmf, grid + shift, h, delta - delta_error) + eps_error


def _discretise(q: float, sigma: float, grid: np.ndarray, h: float) -> tuple[np.ndarray, float]:
    """The PRV truncated to the grid's range, rounded to the nearest grid point, and the shift that restores
    its mean (Gopi et al. 2021's mean-preserving discretisation)."""
    t_min, t_max = float(grid[0]), float(grid[-1])
    lo, hi = _prv_cdf(np.array([t_min, t_max]), q, sigma)
    edges = np.clip((_prv_cdf(np.append(grid - h / 2, t_max + h / 2), q, sigma) - lo) / (hi - lo), 0.0, 1.0)
    pmf = np.diff(edges)
    shift = _prv_truncated_mean(q, sigma, t_min, t_max) - float(grid @ pmf)
    if abs(shift) >= h / 2:
        raise FedPromptError("privacy accountant: the discretised PRV's mean is off by more than half a mesh step")
    return pmf, shift


def _discounted_tails(pmf: np.ndarray, h: float) -> np.ndarray:
    """R[i] = sum_{j >= i} p_j e^(-(j - i) h), summed in blocks short enough that e^((j - i) h) stays finite
    (a grid spans 2L, and e^(2L) overflows a double once L passes 354)."""
    out = np.empty_like(pmf)
    block = max(1, int(500 / h))
    carry = 0.0
    for end in range(len(pmf), 0, -block):
        start = max(0, end - block)
        k = np.arange(end - start) * h
        out[start:end] = (np.cumsum((pmf[start:end] * np.exp(-k))[::-1])[::-1] * np.exp(k)
                          + carry * np.exp(k - (end - start) * h))
        carry = float(out[start])
    return out


def _discrete_epsilon(pmf: np.ndarray, values: np.ndarray, h: float, delta: float) -> float:
    """The exact epsilon at which a discrete PRV's delta(eps) = sum_j p_j (1 - e^(eps - t_j))_+ equals ``delta``,
    for values t_j spaced by ``h``.

    With D[i] = sum_{j >= i} p_j and R[i] = sum_{j >= i} p_j e^(t_i - t_j), delta(t_i) = D[i] - R[i] decreases
    in i; for the first i with delta(t_i) <= delta, eps lies in (t_(i-1), t_i], where
    delta(eps) = D[i] - e^(eps - t_i) R[i]."""
    tail = np.cumsum(pmf[::-1])[::-1]
    discounted = _discounted_tails(pmf, h)
    i = int(np.searchsorted(discounted - tail, -delta, side="left"))
    if i <= 0 or i >= len(pmf):
        raise FedPromptError(f"privacy accountant: delta {delta:g} is outside the PRV grid")
    return float(values[i] + math.log((tail[i] - delta) / discounted[i]))


# --- accountants ---------------------------------------------------------------------------------------------

def _check_step(noise_multiplier: object, sample_rate: object, num_steps: object = 1,
                where: str = "privacy accountant") -> Step:
    """A history entry of the right types and ranges, or ``FedPromptError`` saying which value is wrong."""
    def number(value: object) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

    if not (number(noise_multiplier) and float(noise_multiplier) >= 0):  # type: ignore[arg-type]
        raise FedPromptError(f"{where}: noise_multiplier must be finite and >= 0, got {noise_multiplier!r}")
    if not (number(sample_rate) and 0 <= float(sample_rate) <= 1):  # type: ignore[arg-type]
        raise FedPromptError(f"{where}: sample_rate must be in [0, 1], got {sample_rate!r}")
    if not (isinstance(num_steps, int) and not isinstance(num_steps, bool) and num_steps >= 1):
        raise FedPromptError(f"{where}: num_steps must be an integer >= 1, got {num_steps!r}")
    return float(noise_multiplier), float(sample_rate), num_steps  # type: ignore[arg-type]


def _merged(history: Sequence[Step], noise_multiplier: float, sample_rate: float, steps: int) -> list[Step]:
    """``history`` plus ``steps`` steps, merged into the last entry when it has the same parameters (as Opacus)."""
    out = list(history)
    if out and out[-1][:2] == (noise_multiplier, sample_rate):
        out[-1] = (noise_multiplier, sample_rate, out[-1][2] + steps)
    else:
        out.append((noise_multiplier, sample_rate, steps))
    return out


class Accountant(abc.ABC):
    """Privacy spent by a sequence of Poisson-sampled Gaussian steps, as a mergeable history."""

    def __init__(self) -> None:
        self.history: list[Step] = []

    @classmethod
    @abc.abstractmethod
    def mechanism(cls) -> str:
        """The accounting mechanism's name (the ``dp.accountant`` value)."""

    @abc.abstractmethod
    def epsilon_of(self, history: Sequence[Step], delta: float) -> float:
        """Epsilon at ``delta`` of a non-empty history."""

    def step(self, *, noise_multiplier: float, sample_rate: float) -> None:
        """Record one step of the mechanism."""
        sigma, q, _ = _check_step(noise_multiplier, sample_rate)
        self.history = _merged(self.history, sigma, q, 1)

    def get_epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (0 before any step)."""
        return self.epsilon_of(self.history, delta) if self.history else 0.0

    def epsilon_after(self, steps: int, *, noise_multiplier: float, sample_rate: float, delta: float) -> float:
        """Epsilon if ``steps`` more steps were taken, without taking them."""
        sigma, q, n = _check_step(noise_multiplier, sample_rate, steps)
        return self.epsilon_of(_merged(self.history, sigma, q, n), delta)

    def get_optimizer_hook_fn(self, sample_rate: float) -> Callable[[NoisyOptimizer], None]:
        """A hook for Opacus's ``DPOptimizer.attach_step_hook``: one step per optimizer step, at ``sample_rate``
        times the batches accumulated into it (as Opacus's own accountants do)."""
        def hook(optimizer: NoisyOptimizer) -> None:
            self.step(noise_multiplier=optimizer.noise_multiplier,
                      sample_rate=sample_rate * optimizer.accumulated_iterations)
        return hook

    def state_dict(self) -> dict[str, Any]:
        """The accountant's whole state, JSON-serialisable: ``{"mechanism": name, "history": [[s, q, n], ...]}``."""
        return {"mechanism": self.mechanism(), "history": [list(entry) for entry in self.history]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the history by a saved one, after checking all of it; ``FedPromptError`` otherwise (fail
        closed: a ledger that cannot be read must never restart at epsilon 0)."""
        if not isinstance(state, Mapping) or set(state) != {"mechanism", "history"}:
            raise FedPromptError("privacy accountant state: expected exactly the keys 'mechanism' and 'history'")
        if state["mechanism"] != self.mechanism():
            raise FedPromptError(f"privacy accountant state: mechanism {state['mechanism']!r} cannot be loaded into "
                                 f"a {self.mechanism()!r} accountant")
        entries = state["history"]
        if not isinstance(entries, list) or not all(isinstance(e, list | tuple) and len(e) == 3 for e in entries):
            raise FedPromptError("privacy accountant state: history must be a list of "
                                 "[noise_multiplier, sample_rate, num_steps] entries")
        self.history = [_check_step(sigma, q, n, where=f"privacy accountant state: history[{i}]")
                        for i, (sigma, q, n) in enumerate(entries)]

    def to_json(self) -> str:
        """``state_dict`` as JSON text, the form both ledgers store."""
        return json.dumps(self.state_dict())

    def load_json(self, text: str) -> None:
        """``load_state_dict`` from JSON text; ``FedPromptError`` when it is not valid JSON or not a valid state."""
        try:
            state = json.loads(text)
        except ValueError as exc:
            raise FedPromptError(f"privacy accountant state: not valid JSON ({exc})") from exc
        self.load_state_dict(state)


class RDPAccountant(Accountant):
    """Rényi DP accounting (Mironov 2017; Mironov, Talwar and Zhang 2019), converted by Balle et al. 2020."""

    @classmethod
    def mechanism(cls) -> str:
        return "rdp"

    def epsilon_of(self, history: Sequence[Step], delta: float) -> float:
        return rdp_epsilon(history, delta)


class PRVAccountant(Accountant):
    """PRV accounting (Gopi, Lee and Wutschitz 2021): an upper bound, tighter than RDP, within ``eps_error``."""

    def __init__(self, eps_error: float = PRV_EPS_ERROR) -> None:
        super().__init__()
        self.eps_error = eps_error

    @classmethod
    def mechanism(cls) -> str:
        return "prv"

    def epsilon_of(self, history: Sequence[Step], delta: float) -> float:
        return prv_epsilon(history, delta, self.eps_error)


#: The mechanisms ``dp.accountant`` may name.
ACCOUNTANTS: dict[str, type[Accountant]] = {cls.mechanism(): cls for cls in (RDPAccountant, PRVAccountant)}


def create_accountant(mechanism: str) -> Accountant:
    """A fresh accountant for ``mechanism``, or ``ConfigError`` naming ``dp.accountant``."""
    if mechanism not in ACCOUNTANTS:
        raise ConfigError(f"dp.accountant: must be one of {', '.join(ACCOUNTANTS)}, got {mechanism!r}")
    return ACCOUNTANTS[mechanism]()


def calibrate_noise(*, target_epsilon: float, target_delta: float, sample_rate: float, steps: int, mechanism: str,
                    key: str, tolerance: float = 0.01) -> float:
    """The noise multiplier whose ``steps`` steps at ``sample_rate`` spend at most ``target_epsilon``, within
    ``tolerance`` of it: double an upper bracket from 20 until it is private enough, then bisect (as Opacus's
    ``get_noise_multiplier``, so both give the same sigma).  ``ConfigError`` naming ``key`` (the setting that
    asked for ``target_epsilon``) when no sigma up to ``MAX_NOISE_MULTIPLIER`` reaches it."""
    accountant = create_accountant(mechanism)

    def epsilon(sigma: float) -> float:
        return accountant.epsilon_of([_check_step(sigma, sample_rate, steps)], target_delta)

    low, high = 0.0, 20.0
    eps_high = epsilon(high)
    while eps_high > target_epsilon:
        high *= 2
        if high > MAX_NOISE_MULTIPLIER:
            raise ConfigError(f"{key}: {target_epsilon} is unreachable for {steps} steps at sample rate "
                              f"{sample_rate:.4g} (it would need a noise multiplier above {MAX_NOISE_MULTIPLIER:g})")
        eps_high = epsilon(high)
    while target_epsilon - eps_high > tolerance:
        middle = (low + high) / 2
        eps_middle = epsilon(middle)
        if eps_middle < target_epsilon:
            high, eps_high = middle, eps_middle
        else:
            low = middle
    return high
