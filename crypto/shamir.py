"""Shamir secret sharing of RNS polynomials: any ``t`` of ``n`` shares rebuild the secret, ``t - 1`` say nothing.

Shamir ("How to share a secret", CACM 1979), applied independently to every residue of a polynomial mod
every prime of the ring, so a share is itself a polynomial in the same (NTT) representation and sharing
commutes with the ring's addition and multiplication by public polynomials: a decryptor can apply its
Lagrange weight to its share and multiply by a ciphertext's ``c1`` without ever rebuilding the secret
(the t-out-of-n threshold decryption of Asharov et al., EUROCRYPT 2012, and of Mouchet et al., PETS 2021).
Parties are numbered 1..n; the secret sits at 0.

Dealing is vectorised in ``uint64``: a Horner step ``acc * x + c`` multiplies a residue below ``q < 2^61`` by
a party index ``x < 2^11``, so the quotient ``floor(acc * x / q) < x`` is exact in float64 up to one unit
(its relative error 2^-52 times a quotient below 2^11) and the remainder, computed with wrap-around in
``uint64``, is corrected by one ``q`` either way.  n = 50 members deal in well under a second each.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from fedprompt.crypto.errors import ParameterError
from fedprompt.crypto.rns import Poly, Ring

#: Largest party index the float64 quotient of :func:`evaluate` is exact for (and more than ``members`` allows).
MAX_INDEX = 2**11


def evaluate(coefficients: np.ndarray, moduli: Sequence[int], indices: Sequence[int]) -> dict[int, np.ndarray]:
    """``f(x) = sum_k coefficients[k] x^k`` mod each prime, per residue, for each index ``x`` (Horner).

    ``coefficients``: ``(degree + 1, limbs, N)`` ``uint64`` residues, each below its prime (row ``k`` of limb
    ``l`` mod ``moduli[l]``).  Returns ``uint64`` ``(limbs, N)`` arrays."""
    if any(not 0 <= x < MAX_INDEX for x in indices) or max(moduli) >= 2**61:
        raise ParameterError(f"Shamir evaluation needs indices below {MAX_INDEX} and primes below 2^61")
    q = np.array(moduli, dtype=np.uint64).reshape(1, -1, 1)
    q_float, q_signed = q.astype(np.float64), q.astype(np.int64)
    x = np.array(indices, dtype=np.uint64).reshape(-1, 1, 1)
    x_float = x.astype(np.float64)
    acc = np.broadcast_to(coefficients[-1], (len(indices), *coefficients.shape[1:])).copy()
    for coefficient in coefficients[-2::-1]:  # all indices at once: one Horner step per coefficient
        quotient = np.floor(acc.astype(np.float64) * x_float / q_float).astype(np.uint64)
        product = (acc * x - quotient * q).view(np.int64)  # the exact value, in (-q, 2q)
        product = np.where(product < 0, product + q_signed, product)
        product = np.where(product >= q_signed, product - q_signed, product).view(np.uint64)
        acc = product + coefficient
        acc = np.where(acc >= q, acc - q, acc)
    return dict(zip(indices, acc, strict=True))


def share(ring: Ring, secret: Poly, threshold: int, indices: Sequence[int]) -> dict[int, Poly]:
    """Shares ``f(x)`` for each index ``x``, where ``f`` has degree ``threshold - 1``, ``f(0) = secret`` and
    CSPRNG-uniform higher coefficients (per prime, per residue)."""
    limbs = secret.shape[0]
    coefficients = np.stack([np.asarray(secret, dtype=np.uint64)]
                            + [ring.uniform_residues(limbs, os.urandom) for _ in range(threshold - 1)])
    return {x: value.astype(object) for x, value in evaluate(coefficients, ring.moduli[:limbs], indices).items()}


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
