"""Threshold CKKS parameters: the ring, the threshold and the smudging (noise-flooding) width sized by the
Renyi-divergence argument that ``crypto.threshold``'s docstring and ``docs/he.md`` ("Threshold CKKS") give."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedprompt.crypto.ckks import CkksParams
from fedprompt.crypto.errors import ParameterError

KEY_SIGMA = 3.2  # SEAL's error width, for the public-key shares and seeded uploads
RENYI_ORDER = 128
#: Largest expected error of a decrypted sum's value that parameters may have: beyond it, flooding swamps updates.
_MAX_ERROR = 1e-2


@dataclass(frozen=True)
class ThresholdParams:
    """A threshold job: n members, any ``threshold`` of whom decrypt, on an addition-only CKKS chain.

    Defaults: N = 4096 with primes of 60 + 49 bits (109 bits: exactly the Homomorphic Encryption Standard's
    128-bit bound at N = 4096, ``CoeffModulus.MaxBitCount(4096, tc128)``); the 49-bit special prime divides
    the public-key encryption noise down.  Scale 2^45: the smudging noise of the t decryption shares must stay
    far below the scale, and the 60-bit data prime then leaves sums of magnitude up to 2^13 = 8192 (the
    weight slot included).  ``threshold`` 0 means a majority of the members.  ``max_decryptions`` bounds the
    chunk decryptions one key serves (the ``Q`` of the smudging argument).  ``seeded_uploads``: members
    encrypt under their own secrets on per-round seeds (``crypto.threshold_seeded``, half the upload, 9.5-34x
    less noise); False: under the collective public key (what a ciphertext product, the Gram defence, needs).
    """

    members: int
    threshold: int = 0
    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 49)
    scale_bits: int = 45
    max_decryptions: int = 4096
    seeded_uploads: bool = True

    @property
    def t(self) -> int:
        return self.threshold or self.members // 2 + 1

    @property
    def ckks(self) -> CkksParams:
        """The ring, scale and summand bound (one update per member) as ``crypto.ckks`` parameters."""
        return CkksParams(self.poly_modulus_degree, self.coeff_mod_bit_sizes, self.scale_bits, self.members)

    @property
    def fresh_noise_sigma(self) -> float:
        """Coefficient noise of a fresh upload.  Seeded: the member's own Gaussian ``e_i``.  Public key: after
        SEAL divides by the special prime, the rounding of ``c0`` and ``c1 * s`` dominates, ``s`` having
        variance 2n/3."""
        if self.seeded_uploads:
            return KEY_SIGMA
        return math.sqrt((1 + self.poly_modulus_degree * 2 * self.members / 3) / 12 + KEY_SIGMA**2)

    @property
    def noise_bound(self) -> float:
        """l2 bound (twice the expectation) on the noise of an aggregate: seeded, at most ``members`` uploads
        (a retry is a fresh upload round); public key, ``members`` ciphertexts and one re-randomisation."""
        summands = self.members if self.seeded_uploads else self.members + 1
        return 2 * math.sqrt(self.poly_modulus_degree * summands) * self.fresh_noise_sigma

    @property
    def smudging_sigma(self) -> float:
        """Each decryption share's flooding width: ``sqrt(alpha * Q / 2) * noise_bound`` (module docstring)."""
        return math.sqrt(RENYI_ORDER * self.max_decryptions / 2) * self.noise_bound

    @property
    def error_estimate(self) -> float:
        """Expected largest error of one decrypted real of a sum: 5 standard deviations of t shares' flooding
        through the decoding (each real sums N/2 coefficients' noise)."""
        return 5 * math.sqrt(self.t * self.poly_modulus_degree / 2) * self.smudging_sigma / 2.0**self.scale_bits

    @property
    def download_bits(self) -> tuple[int, int]:
        """Bits kept of each ``c0`` and ``c1`` coefficient when the coordinator compresses an aggregate: rounding
        then adds at most half the decryption shares' flooding (std ``q 2^-k / sqrt 12``, for ``c1`` times
        ``||s||_2 = sqrt(N 2n/3)``), so the compressed download errs by at most ~12 % more.  Seeded sums send
        no ``c1`` (0 bits): it is ``|U| a_r``, rebuilt from the round's seed."""
        allowed = math.sqrt(self.t) * self.smudging_sigma / 2 * math.sqrt(12)
        amplification = math.sqrt(self.poly_modulus_degree * 2 * self.members / 3)
        top = self.coeff_mod_bit_sizes[0]
        c1_bits = 0 if self.seeded_uploads else min(top, math.ceil(top - math.log2(allowed / amplification)))
        return min(top, math.ceil(top - math.log2(allowed))), c1_bits

    def check(self, prefix: str = "threshold") -> None:
        """Raise ``ParameterError`` naming the key if the parameters are unusable or below 128-bit security."""
        self.ckks.check(prefix)
        if not 2 <= self.members <= 1000:
            raise ParameterError(f"{prefix}.members: must be in [2, 1000], got {self.members}")
        if not (self.threshold == 0 or 2 <= self.threshold <= self.members):
            raise ParameterError(f"{prefix}.threshold: must be in [2, {self.members}] (0: a majority; 1 would let "
                                 f"any member decrypt alone), got {self.threshold}")
        if not 1 <= self.max_decryptions <= 2**20:
            raise ParameterError(f"{prefix}.max_decryptions: must be in [1, 1048576], got {self.max_decryptions}")
        if self.error_estimate > _MAX_ERROR:
            raise ParameterError(f"{prefix}.scale_bits: smudging noise for {self.members} members would err by "
                                 f"~{self.error_estimate:.2g} per value; raise the scale or lower max_decryptions")

    def describe(self) -> dict[str, object]:
        encryption = ("symmetric under each member's own secret, seeded per round" if self.seeded_uploads
                      else "public key (collective)")
        return {**self.ckks.describe(), "encryption": encryption, "members": self.members, "threshold": self.t,
                "smudging_sigma_bits": round(math.log2(self.smudging_sigma), 1), "max_decryptions": self.max_decryptions}
