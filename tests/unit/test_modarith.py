"""The uint64 modular arithmetic under threshold CKKS equals Python's big integers, edges included."""

from __future__ import annotations

import numpy as np
import pytest

from fedprompt.crypto import modarith
from fedprompt.crypto.errors import ParameterError
from fedprompt.crypto.threshold import ThresholdContext, ThresholdParams

# SEAL's primes of the threshold defaults (60 and 49 bits), a 61-bit prime (the limit) and a small one
PRIMES = (ThresholdContext(ThresholdParams(members=3)).ring.moduli + [2**61 - 1, 12289])


def residues(q: int, count: int, seed: int) -> np.ndarray:
    """Random residues mod ``q`` with the edge values 0, 1, q - 2 and q - 1 first."""
    rng = np.random.default_rng(seed)
    edges = np.array([0, 1, q - 2, q - 1], dtype=np.uint64)
    return np.concatenate([edges, rng.integers(0, q, count - len(edges), dtype=np.uint64)])


def big(values: np.ndarray) -> list[int]:
    return [int(v) for v in values]


@pytest.mark.parametrize("q", PRIMES)
def test_mulmod_equals_big_integer_products(q: int) -> None:
    a, b = residues(q, 2000, 1), residues(q, 2000, 2)[::-1].copy()
    edges = residues(q, 4, 0)
    a = np.concatenate([a, np.repeat(edges, 4)])  # every pair of edge values
    b = np.concatenate([b, np.tile(edges, 4)])
    got = modarith.mulmod(a.reshape(1, -1), b.reshape(1, -1), [q])[0]
    assert got.dtype == np.uint64
    assert big(got) == [x * y % q for x, y in zip(big(a), big(b), strict=True)]


def test_mulmod_reduces_each_row_by_its_own_prime() -> None:
    moduli = PRIMES[:2]
    a = np.stack([residues(q, 500, 3) for q in moduli])
    b = np.stack([residues(q, 500, 4) for q in moduli])
    got = modarith.mulmod(a, b, moduli)
    for row, q in enumerate(moduli):
        assert big(got[row]) == [x * y % q for x, y in zip(big(a[row]), big(b[row]), strict=True)]


@pytest.mark.parametrize("q", PRIMES)
def test_reduce128_divides_any_numerator_below_four_to_the_bit_length(q: int) -> None:
    rng = np.random.default_rng(5)
    top = 4 ** q.bit_length()
    numbers = [0, 1, q - 1, q, q * q - 1, top - 1] + [int.from_bytes(rng.bytes(16), "little") % top
                                                      for _ in range(2000)]
    hi = np.array([x >> 64 for x in numbers], dtype=np.uint64).reshape(1, -1)
    lo = np.array([x & (2**64 - 1) for x in numbers], dtype=np.uint64).reshape(1, -1)
    quotient, remainder = modarith.reduce128(hi, lo, [q])
    assert big(quotient[0]) == [x // q for x in numbers]
    assert big(remainder[0]) == [x % q for x in numbers]


@pytest.mark.parametrize("q", PRIMES)
def test_shoup_products_add_and_sub_equal_big_integers(q: int) -> None:
    a, w = residues(q, 3000, 6), residues(q, 3000, 7)
    anything = np.random.default_rng(8).integers(0, 2**64 - 1, 3000, dtype=np.uint64, endpoint=True)
    anything[:2] = [0, 2**64 - 1]
    qq = np.uint64(q)
    w_shoup = modarith.shoup(w, q)
    assert big(w_shoup) == [(x << 64) // q for x in big(w)]
    assert big(modarith.mulmod_shoup(anything, w, w_shoup, qq)) == [
        x * y % q for x, y in zip(big(anything), big(w), strict=True)]
    assert big(modarith.addmod(a, w, qq)) == [(x + y) % q for x, y in zip(big(a), big(w), strict=True)]
    assert big(modarith.submod(a, w, qq)) == [(x - y) % q for x, y in zip(big(a), big(w), strict=True)]


def test_mul128_is_the_exact_product() -> None:
    a = np.array([0, 1, 2**64 - 1, 2**63, 2**32 - 1, 2**32], dtype=np.uint64)
    b = np.array([2**64 - 1, 2**64 - 1, 2**64 - 1, 2, 2**32 + 1, 2**32], dtype=np.uint64)
    hi, lo = modarith.mul128(a, b)
    assert [(int(h) << 64) | int(low) for h, low in zip(hi, lo, strict=True)] == [
        x * y for x, y in zip(big(a), big(b), strict=True)]


@pytest.mark.parametrize("q", PRIMES[:2])
def test_ntt_is_the_negacyclic_evaluation_at_odd_powers_of_psi(q: int) -> None:
    """Index k holds a(psi^(2 br(k) + 1)) (SEAL's order), checked against a direct big-integer evaluation at
    N = 64; the inverse undoes it at N = 4096."""
    n = 64
    table = modarith.Ntt(q, n)
    coeffs = residues(q, n, 9)
    psi = modarith.minimal_root(q, 2 * n)
    order = modarith.bit_reversal(n)
    expected = [sum(c * pow(psi, (2 * int(order[k]) + 1) * i, q) for i, c in enumerate(big(coeffs))) % q
                for k in range(n)]
    assert big(table.forward(coeffs)) == expected
    large = modarith.ntt(q, 4096)
    poly = residues(q, 4096, 10)
    assert np.array_equal(large.inverse(large.forward(poly)), poly)


def test_primes_beyond_the_uint64_bound_are_refused() -> None:
    with pytest.raises(ParameterError):
        modarith.mulmod(np.zeros((1, 4), dtype=np.uint64), np.zeros((1, 4), dtype=np.uint64), [2**61 + 1])
    with pytest.raises(ParameterError):
        modarith.Ntt(2**62 + 1, 8)


@pytest.mark.parametrize("q", PRIMES[:2])
@pytest.mark.parametrize("bits", [1, 37, 41, 0])
def test_modulus_switching_down_and_up_equals_big_integer_rounding(q: int, bits: int) -> None:
    """The download's rounding (``ThresholdContext.compress``/``expand``); 0 stands for the prime's bit length."""
    bits = bits or q.bit_length()
    coeffs = residues(q, 3000, 11)
    down = modarith.switch_down(coeffs, q, bits)
    assert big(down) == [((c << bits) + q // 2) // q % (1 << bits) for c in big(coeffs)]
    rounded = np.concatenate([np.array([0, (1 << bits) - 1], dtype=np.uint64), down])
    assert big(modarith.switch_up(rounded, q, bits)) == [(r * q + (1 << (bits - 1))) >> bits for r in big(rounded)]
