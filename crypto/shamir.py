"""Shamir secret sharing of RNS polynomials: any ``t`` of ``n`` shares rebuild the secret, ``t - 1`` say nothing.

Shamir ("How to share a secret", CACM 1979), applied independently to every residue of a polynomial mod
every prime of the ring, so a share is itself a polynomial in the same (NTT) representation and sharing
commutes with the ring's addition and multiplication by public polynomials: a decryptor can apply its
Lagrange weight to its share and multiply by a ciphertext's ``c1`` without ever rebuilding the secret
(the t-out-of-n threshold decryption of Asharov et al., EUROCRYPT 2012, and of Mouchet et al., PETS 2021).
Parties are numbered 1..n; the secret sits at 0.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from fedprompt.crypto.errors import ParameterError
from fedprompt.crypto.rns import Poly, Ring


def share(ring: Ring, secret: Poly, threshold: int, indices: Sequence[int]) -> dict[int, Poly]:
    """Shares ``f(x)`` for each index ``x``, where ``f`` has degree ``threshold - 1``, ``f(0) = secret`` and
    CSPRNG-uniform higher coefficients (per prime, per residue)."""
    limbs = secret.shape[0]
    q = ring.q(limbs)
    coefficients = [secret] + [ring.uniform(limbs, os.urandom) for _ in range(threshold - 1)]
    out = {}
    for x in indices:
        acc = coefficients[-1]
        for coefficient in reversed(coefficients[:-1]):
            acc = (acc * x + coefficient) % q
        out[x] = acc
    return out


def lagrange(ring: Ring, indices: Sequence[int], index: int, limbs: int) -> np.ndarray:
    """The weight of ``index``'s share in rebuilding ``f(0)`` from the shares of ``indices``, per prime (a column).

    ``prod_{m != index} x_m / (x_m - x_index)`` mod each prime: the indices are distinct and smaller than any
    prime, so every denominator is invertible.
    """
    if index not in indices or len(set(indices)) != len(indices) or min(indices) < 1:
        raise ParameterError(f"Lagrange weights need distinct positive indices including {index}, got "
                             f"{sorted(indices)}")
    weights = []
    for q in ring.moduli[:limbs]:
        numerator, denominator = 1, 1
        for other in indices:
            if other != index:
                numerator = numerator * other % q
                denominator = denominator * (other - index) % q
        weights.append(numerator * pow(denominator, -1, q) % q)
    return np.array(weights, dtype=object).reshape(-1, 1)
