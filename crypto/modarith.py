"""Vectorised modular arithmetic on ``uint64`` residues of primes below 2^61, and the negacyclic NTT.

Threshold CKKS (``crypto.threshold``, ``crypto.rns``) multiplies polynomials of 4,096 residues mod 49- and
60-bit primes.  Python ints (``dtype=object``) cost ~100 ns per operation and 80-bit ``longdouble`` quotients
run on the x87 unit; here every product is exact in ``uint64`` numpy, with no loop over coefficients:

* :func:`mul128` splits both factors into 32-bit halves: four exact 64-bit partial products give the 128-bit
  product as ``(hi, lo)``;
* :func:`mulmod` reduces it by Barrett's method (Barrett, CRYPTO 1986; the variant of Menezes, van Oorschot
  and Vanstone, *Handbook of Applied Cryptography*, algorithm 14.42): with ``s`` the prime's bit length and
  ``mu = floor(4^s / q)``, the quotient estimate ``floor(floor(x / 2^(s-1)) mu / 2^(s+1))`` of any
  ``x < 4^s`` is short by at most 2, so two conditional subtractions finish it;
* :func:`mulmod_shoup` multiplies by a fixed factor ``w`` with its precomputed ``floor(w 2^64 / q)`` (Shoup,
  as in NTL and SEAL's NTT): the high product estimated from three of its four partial products, the
  remainder in ``[0, 4q)``, two conditional subtractions (the NTT keeps the first only, between stages);
* a residue in ``[0, 2q)`` is reduced as ``min(x, x - q)``: when ``x < q`` the difference wraps above it.

:class:`Ntt` holds one prime's negacyclic transform tables in SEAL's NTT order (``crypto.rns``); tables are
built once per ``(q, N)`` in a process (:func:`ntt`).  ``tests/unit/test_modarith.py`` checks every
primitive against Python's big integers on random and edge residues (0, 1, q - 1).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from fedprompt.crypto.errors import ParameterError

#: A ``uint64`` array, or one ``uint64`` (broadcast).
Words = np.ndarray | np.uint64
_LOW = np.uint64(0xFFFFFFFF)
_32 = np.uint64(32)


def mul128(a: Words, b: Words) -> tuple[np.ndarray, np.ndarray]:
    """The exact product of ``uint64`` arrays (broadcasting) as its high and low 64-bit words."""
    a0, a1, b0, b1 = a & _LOW, a >> _32, b & _LOW, b >> _32
    low, cross1, cross2 = a0 * b0, a0 * b1, a1 * b0
    middle = (low >> _32) + (cross1 & _LOW) + (cross2 & _LOW)
    return a1 * b1 + (cross1 >> _32) + (cross2 >> _32) + (middle >> _32), np.asarray(a * b)


def _column(values: Sequence[int]) -> np.ndarray:
    return np.array(values, dtype=np.uint64).reshape(-1, 1)


@functools.lru_cache(maxsize=64)
def _barrett(moduli: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """Per prime (a column): ``q``, ``s - 1``, ``65 - s``, ``mu``, ``s + 1``, ``63 - s``."""
    if not moduli or min(moduli) < 2 or max(moduli) >= 2**61:
        raise ParameterError(f"uint64 modular arithmetic needs primes in [2, 2^61), got {list(moduli)}")
    bits = [q.bit_length() for q in moduli]
    return (_column(moduli), _column([s - 1 for s in bits]), _column([65 - s for s in bits]),
            _column([(1 << 2 * s) // q for s, q in zip(bits, moduli, strict=True)]),
            _column([s + 1 for s in bits]), _column([63 - s for s in bits]))


def reduce128(hi: np.ndarray, lo: np.ndarray, moduli: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(x // q, x % q)`` of ``x = hi 2^64 + lo`` below ``4^s`` (``s``: the bit length of ``q``), row ``i``
    of ``(limbs, N)`` arrays by ``moduli[i]`` (Barrett)."""
    q, down, up, mu, shift, back = _barrett(tuple(moduli))
    top = (hi << up) | (lo >> down)  # floor(x / 2^(s-1)) < 2^(s+1)
    est_hi, est_lo = mul128(top, mu)
    quotient = (est_hi << back) | (est_lo >> shift)
    remainder = lo - quotient * q  # the exact remainder, below 3q: it fits, so wrap-around cancels
    for _ in range(2):
        over = remainder >= q
        remainder = np.where(over, remainder - q, remainder)
        quotient = quotient + over
    return quotient, remainder


def mulmod(a: Words, b: Words, moduli: Sequence[int]) -> np.ndarray:
    """``a * b mod q`` for ``(limbs, N)`` residues (broadcasting), row ``i`` mod ``moduli[i]``."""
    return reduce128(*mul128(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64)), moduli)[1]


def addmod(a: np.ndarray, b: np.ndarray, q: Words) -> np.ndarray:
    """``a + b mod q`` for residues below ``q`` (``q`` a ``uint64`` scalar or column)."""
    total = a + b
    return np.minimum(total, total - q)


def submod(a: np.ndarray, b: np.ndarray, q: Words) -> np.ndarray:
    """``a - b mod q`` for residues below ``q``."""
    difference = a + (q - b)
    return np.minimum(difference, difference - q)


def switch_down(coeffs: np.ndarray, q: int, bits: int) -> np.ndarray:
    """``round(c 2^bits / q) mod 2^bits`` of residues ``c`` below ``q`` (modulus switching to ``2^bits``,
    ``bits`` at most the bit length of ``q``), exact: the 128-bit ``c 2^bits + floor(q / 2)`` divided by Barrett."""
    high, low = coeffs >> np.uint64(64 - bits), coeffs << np.uint64(bits)
    numerator = low + np.uint64(q // 2)
    rounded = reduce128(high + (numerator < low), numerator, [q])[0][0]
    return rounded & np.uint64((1 << bits) - 1)


def switch_up(rounded: np.ndarray, q: int, bits: int) -> np.ndarray:
    """``floor((r q + 2^(bits - 1)) / 2^bits)`` of ``r`` below ``2^bits``: :func:`switch_down`'s values lifted back
    to residues below ``q``, exact."""
    high, low = mul128(rounded, np.uint64(q))
    numerator = low + np.uint64(1 << (bits - 1))
    return ((high + (numerator < low)) << np.uint64(64 - bits)) | (numerator >> np.uint64(bits))


def shoup(w: np.ndarray, q: int) -> np.ndarray:
    """``floor(w 2^64 / q)`` of residues ``w`` below ``q``: the companion :func:`mulmod_shoup` needs."""
    return ((np.asarray(w, dtype=np.uint64).astype(object) << 64) // q).astype(np.uint64)


def mulmod_shoup(a: np.ndarray, w: np.ndarray, w_shoup: np.ndarray, q: Words) -> np.ndarray:
    """``a * w mod q`` for any ``uint64`` ``a`` and a fixed residue ``w`` with ``w_shoup = shoup(w, q)`` (``q`` one
    prime, or a column of them for rows of residues)."""
    product = _mulmod_lazy(np.asarray(a, dtype=np.uint64), w, w_shoup & _LOW, w_shoup >> _32, q)
    return np.minimum(product, product - q, out=product)


def _mulmod_lazy(a: np.ndarray, w: np.ndarray, shoup_low: np.ndarray, shoup_high: np.ndarray,
                 q: Words) -> np.ndarray:
    """``a * w mod q`` up to one ``q`` (in ``[0, 2q)``; Harvey's lazy reduction, "Faster arithmetic for
    number-theoretic transforms", J. Symb. Comp. 2014) for any ``uint64`` ``a``, the companion split in 32-bit
    halves beforehand.  Shoup's quotient ``floor(a w_shoup / 2^64)`` is estimated without the low product and
    the carries of the two cross products, so it is short by at most 2: the remainder lies in ``[0, 4q)``
    (exact in ``uint64`` for ``q < 2^62``), and one conditional subtraction of ``2q`` brings it below ``2q``."""
    low, high = a & _LOW, a >> _32
    low *= shoup_high
    low >>= _32
    cross = high * shoup_low
    cross >>= _32
    high *= shoup_high
    high += low
    high += cross  # floor(a w_shoup / 2^64), less at most 2
    high *= q
    remainder = a * w
    remainder -= high
    twice = q + q
    return np.minimum(remainder, remainder - twice, out=remainder)


def bit_reversal(n: int) -> np.ndarray:
    """The permutation ``k -> k`` with its ``log2 n`` bits reversed."""
    bits = n.bit_length() - 1
    out = np.zeros(n, dtype=np.int64)
    for b in range(bits):
        out |= ((np.arange(n) >> b) & 1) << (bits - 1 - b)
    return out


def minimal_root(q: int, order: int) -> int:
    """SEAL's choice: the smallest primitive ``order``-th root of unity mod ``q`` (``try_minimal_primitive_root``)."""
    for candidate in range(2, q):
        root = pow(candidate, (q - 1) // order, q)
        if pow(root, order // 2, q) == q - 1:
            step, power, smallest = root * root % q, root, root
            for _ in range(order // 2 - 1):
                power = power * step % q
                smallest = min(smallest, power)
            return smallest
    raise ParameterError(f"{q} has no primitive {order}-th root of unity")


class Ntt:
    """Negacyclic NTT tables for one prime in SEAL's order (index ``k`` holds ``a(psi^(2 br(k) + 1))``), each
    twiddle with its Shoup companion.  SEAL's own transform (Cooley-Tukey, natural order in, SEAL's order out,
    ``psi^br(m + i)`` merged into the butterflies, so no twist and no permutation; Gentleman-Sande back) laid out
    in Pease's constant geometry ("An adaptation of the fast Fourier transform for parallel processing", J. ACM
    1968): every stage takes the two contiguous halves and interleaves its sums and differences (the inverse the
    other way round), so each vectorised step runs over N / 2 residues whatever the stage (the in-place order's
    short strided blocks cost ~3x more in numpy).  Butterflies reduce lazily (Harvey 2014): values stay below
    ``4q`` between stages."""

    def __init__(self, q: int, n: int) -> None:
        if q >= 2**61:
            raise ParameterError(f"the NTT needs primes below 2^61, got {q}")
        self.q, self.n = np.uint64(q), n
        psi = minimal_root(q, 2 * n)
        roots = [pow(psi, int(k), q) for k in bit_reversal(n)]  # psi^br(k), SEAL's table
        self.stages = self._stages(roots, q)
        self.inverse_stages = self._stages([pow(w, -1, q) for w in roots], q)[::-1]
        self.scale = self._pair(np.array([pow(n, -1, q)], dtype=np.uint64), q)

    @staticmethod
    def _pair(w: np.ndarray, q: int, repeat: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A table with its Shoup companion's low and high 32-bit halves, the whole table ``repeat`` times."""
        companion = shoup(w, q)
        return np.tile(w, repeat), np.tile(companion & _LOW, repeat), np.tile(companion >> _32, repeat)

    def _stages(self, roots: list[int], q: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The twiddles of stages ``m = 1, 2, 4, ...``: pair ``r`` of stage ``m`` multiplies by
        ``roots[m + r mod m]``."""
        return [self._pair(np.array(roots[m : 2 * m], dtype=np.uint64), q, self.n // (2 * m))
                for m in (1 << s for s in range(self.n.bit_length() - 1))]

    def forward(self, coeffs: np.ndarray) -> np.ndarray:
        """Coefficients (``uint64`` residues, rows of ``(..., N)``) to SEAL's NTT order.  Row by row: numpy runs
        the halves of one row faster than the strided halves of several."""
        q, half = self.q, self.n // 2
        twice = q + q
        rows = np.asarray(coeffs, dtype=np.uint64).reshape(-1, self.n)
        out = np.empty_like(rows)
        for r, row in enumerate(rows):
            u, v, step = row[:half], row[half:], row
            for stage, table in enumerate(self.stages):
                if stage:
                    u = np.minimum(u, u - twice)
                v = _mulmod_lazy(v, *table, q)
                step = np.empty(self.n, dtype=np.uint64)
                np.add(u, v, out=step[0::2])
                difference = step[1::2]
                np.subtract(u, v, out=difference)
                difference += twice
                u, v = step[:half], step[half:]
            step = np.minimum(step, step - twice, out=step)
            out[r] = np.minimum(step, step - q, out=step)
        return out.reshape(np.shape(coeffs))

    def inverse(self, values: np.ndarray) -> np.ndarray:
        """SEAL's NTT order back to coefficients (``uint64`` residues, rows of ``(..., N)``)."""
        q, half = self.q, self.n // 2
        twice = q + q
        rows = np.asarray(values, dtype=np.uint64).reshape(-1, self.n)
        out = np.empty_like(rows)
        for r, step in enumerate(rows):
            for table in self.inverse_stages:
                u, v = step[0::2], step[1::2]
                step = np.empty(self.n, dtype=np.uint64)
                total = np.add(u, v, out=step[:half])
                np.minimum(total, total - twice, out=total)
                difference = u - v
                difference += twice
                step[half:] = _mulmod_lazy(difference, *table, q)
            scaled = _mulmod_lazy(step, *self.scale, q)
            out[r] = np.minimum(scaled, scaled - q, out=scaled)
        return out.reshape(np.shape(values))


@functools.lru_cache(maxsize=16)
def ntt(q: int, n: int) -> Ntt:
    """The tables of ``(q, n)``, built once per process: every ring of a job's parameters shares them."""
    return Ntt(q, n)
