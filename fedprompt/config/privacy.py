"""The job's privacy sections: differential privacy (``[dp]``) and homomorphic-encrypted aggregation (``[he]``).

Each section validates its own values; the rules they impose on the rest of a job (which aggregators an
encrypted job may use, DP in a black-box job, participant-level noise with levels) live in
``JobConfig.validate`` and ``LevelsSection.check_job``.  Split from ``job.py`` to keep each module short.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fedprompt.config.codec import INF_ALLOWED, check, check_range
from fedprompt.crypto.ckks import CkksParams
from fedprompt.crypto.errors import ParameterError
from fedprompt.crypto.threshold import ThresholdParams
from fedprompt.crypto.threshold_gram import MAX_NORM_BOUND, gram_threshold_params
from fedprompt.errors import ConfigError

#: Privacy accountants ``dp.accountant`` may name.
ACCOUNTANTS = ("rdp", "prv")
#: How an encrypted job keys its CKKS: ``threshold`` (no party holds the whole secret; t of the n members
#: decrypt) or ``single_key`` (every member holds the one key: for trusted consortia only).
HE_MODES = ("threshold", "single_key")
#: The largest finite privacy budget: an epsilon above it protects nothing, and calibrating noise for a target
#: near 1e15 never ends (its bisection asks for an absolute precision no float has).  ``inf`` stays allowed.
MAX_EPSILON = 1000.0
#: The largest noise multiplier: a sigma of 1000 times the clip norm already drowns any update.
MAX_NOISE = 1000.0
#: The largest ``he.weight_unit``: a billion examples per unit of weight already shrinks any site's weight to nothing.
MAX_WEIGHT_UNIT = 1e9
#: The largest clip norm (per-example gradient or whole update); prompt updates have norms of order 1.
MAX_CLIP = 1e6


@dataclass(frozen=True)
class DPSection:
    """Differential privacy (off unless ``enabled``).

    Record level: DP-SGD at every participant (Abadi et al., "Deep Learning with Differential Privacy", 2016)
    with Poisson sampling, per-example clipping to ``max_grad_norm`` and Gaussian noise; ``noise_multiplier``
    0 means "calibrate it so the planned rounds spend exactly ``epsilon``".  ``delta`` 0 means 1/(10 n) of
    the site's n training examples.  A participant refuses to train once a round would exceed ``epsilon``.

    Participant level (on when ``participant_noise_multiplier`` > 0): each update is clipped to
    ``update_clip`` and carries a share of Gaussian noise so the sum over ``job.min_participants`` updates
    holds N(0, sigma^2 C^2) (distributed DP, as in DP-FedAvg: McMahan et al., "Learning Differentially
    Private Recurrent Language Models", 2018).  The job stops before exceeding ``participant_epsilon``.

    Ranges: ``epsilon`` and ``participant_epsilon`` in (0, 1000] or ``inf`` (no budget: the only two floats of
    a job that take ``inf``; ``epsilon`` only with a set ``noise_multiplier``); both noise multipliers in
    [0, 1000]; ``max_grad_norm`` and ``update_clip`` in (0, 1e6]; ``delta`` in [0, 1), ``participant_delta``
    in (0, 1).
    """

    enabled: bool = False
    epsilon: float = field(default=8.0, metadata=INF_ALLOWED)
    delta: float = 0.0
    noise_multiplier: float = 0.0
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    participant_noise_multiplier: float = 0.0
    update_clip: float = 1.0
    participant_epsilon: float = field(default=math.inf, metadata=INF_ALLOWED)
    participant_delta: float = 1e-3

    @property
    def participant_level(self) -> bool:
        return self.enabled and self.participant_noise_multiplier > 0

    def validate(self, prefix: str) -> None:
        check(0 < self.epsilon <= MAX_EPSILON or self.epsilon == math.inf, f"{prefix}.epsilon",
              f"must be in (0, {MAX_EPSILON:g}] or inf, got {self.epsilon}")
        check(0 <= self.delta < 1, f"{prefix}.delta", f"must be in [0, 1) (0 = 1/(10 n)), got {self.delta}")
        check_range(self.noise_multiplier, f"{prefix}.noise_multiplier", 0.0, MAX_NOISE,
                    note="0 = calibrate from epsilon")
        check(self.noise_multiplier > 0 or math.isfinite(self.epsilon), f"{prefix}.epsilon",
              "must be finite when noise_multiplier = 0 (the noise is calibrated from it)")
        check_range(self.max_grad_norm, f"{prefix}.max_grad_norm", 0.0, MAX_CLIP, open_low=True)
        check(self.accountant in ACCOUNTANTS, f"{prefix}.accountant",
              f"must be one of {', '.join(ACCOUNTANTS)}, got {self.accountant!r}")
        check_range(self.participant_noise_multiplier, f"{prefix}.participant_noise_multiplier", 0.0, MAX_NOISE,
                    note="0 = no participant-level noise")
        check_range(self.update_clip, f"{prefix}.update_clip", 0.0, MAX_CLIP, open_low=True)
        check(0 < self.participant_epsilon <= MAX_EPSILON or self.participant_epsilon == math.inf,
              f"{prefix}.participant_epsilon", f"must be in (0, {MAX_EPSILON:g}] or inf (no budget), "
              f"got {self.participant_epsilon}")
        check(0 < self.participant_delta < 1, f"{prefix}.participant_delta",
              f"must be in (0, 1), got {self.participant_delta}")


@dataclass(frozen=True)
class HESection:
    """Homomorphic-encrypted secure aggregation (CKKS): the coordinator only ever adds ciphertexts.

    ``mode`` (default ``threshold``): ``threshold`` (multiparty keys, ``crypto.threshold``: each member holds a share, any ``threshold``
    of the n = ``job.allowed_participants`` decrypt an aggregate, fewer learn nothing; ``threshold`` 0 means a
    majority, n // 2 + 1, and otherwise must lie in [2, n]) or ``single_key`` (one key, created by the dealer
    and held by every member: a coordinator colluding with any one member decrypts every update, so only for
    consortia whose members trust each other).  Threshold jobs use the fixed parameters of
    ``crypto.threshold.ThresholdParams``; the ring numbers below are the single-key chain's.

    ``weight_unit`` (threshold jobs): examples per unit of FedAvg weight.  The threshold parameters hold a
    summand of magnitude at most 8192 / n (weight slot included), so a site encrypts its update and weight in
    units of ``weight_unit`` examples, ``n_i / weight_unit``, not ``n_i`` (``JobConfig.summand_weight``); every
    site uses the same unit, so the weighted mean is unchanged.  A larger unit fits larger sites, a smaller one
    keeps the decrypted mean more precise (docs/he.md, "The weight unit").

    ``gram_norm_bound`` (threshold jobs with a Gram defence): R, the public l2 bound on each weighted upload
    ``weight * delta`` (in ``weight_unit``s), in (0, 2^26].  A site's upload above it is refused, and the Gram
    decryption shares' flooding is sized on it, so the decrypted scalars err by about R (docs/he.md, "Smudging
    sized on the Gram noise"): pick it near the weighted updates' norms.  Such jobs use the fixed parameters of
    ``crypto.threshold_gram.gram_threshold_params`` (N = 8192, public-key uploads).

    ``dealer`` names the participant that creates a single-key job's keys (default: the first to join).  The
    numbers' ranges are the crypto layer's (``CkksParams.check``): a degree of 4096-32768, primes of 16-60 bits
    within 128-bit security, ``scale_bits`` in [20, data prime - 12], ``max_summands`` in [1, 1000000].
    """

    enabled: bool = False
    mode: str = "threshold"
    threshold: int = 0
    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: tuple[int, ...] = (59, 16)
    scale_bits: int = 30
    max_summands: int = 1000
    dealer: str = ""
    weight_unit: float = 100.0
    gram_norm_bound: float = 1000.0

    def validate(self, prefix: str) -> None:
        check(self.mode in HE_MODES, f"{prefix}.mode", f"must be one of {list(HE_MODES)}, got {self.mode!r}")
        check(self.threshold == 0 or 2 <= self.threshold <= 1000, f"{prefix}.threshold",
              f"must be 0 (a majority of the members) or in [2, 1000] (1 would let any member decrypt alone), "
              f"got {self.threshold}")
        check_range(self.weight_unit, f"{prefix}.weight_unit", 0.0, MAX_WEIGHT_UNIT, open_low=True,
                    note="a positive number of examples per unit of FedAvg weight")
        check_range(self.gram_norm_bound, f"{prefix}.gram_norm_bound", 0.0, MAX_NORM_BOUND, open_low=True,
                    note="the l2 bound on a weighted upload of a Gram-defended threshold job")
        try:
            self.params().check(prefix)
        except ParameterError as exc:
            raise ConfigError(str(exc)) from exc

    @property
    def threshold_mode(self) -> bool:
        """An encrypted job whose key is shared among its members (``mode = "threshold"``)."""
        return self.enabled and self.mode == "threshold"

    def threshold_params(self, members: int, gram: bool = False) -> ThresholdParams:
        """The threshold parameters for ``members`` enrolled members (``crypto.threshold.ThresholdParams``); a
        job whose coordinator computes an encrypted Gram matrix (``gram``) takes the Gram chain's
        (``crypto.threshold_gram.gram_threshold_params``)."""
        if gram:
            return gram_threshold_params(members, self.threshold)
        return ThresholdParams(members=members, threshold=self.threshold)

    def params(self) -> CkksParams:
        """The CKKS parameters these settings describe (``crypto.ckks.CkksParams``)."""
        return CkksParams(self.poly_modulus_degree, self.coeff_mod_bit_sizes, self.scale_bits, self.max_summands)
