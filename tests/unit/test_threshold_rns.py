"""The ring arithmetic under threshold CKKS agrees with SEAL's: NTT order, reading and writing SEAL objects,
the common reference polynomial."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal.sealapi as seal

from fedprompt.crypto import shamir
from fedprompt.crypto.errors import InvalidCiphertext
from fedprompt.crypto.rns import Ring, shake_stream
from fedprompt.crypto.threshold import ThresholdContext, ThresholdParams, crp


@pytest.fixture(scope="module")
def ring() -> Ring:
    return ThresholdContext(ThresholdParams(members=3)).ring


def test_ntt_round_trips_small_polynomials_over_every_prime(ring: Ring) -> None:
    coeffs = np.random.default_rng(0).integers(-1000, 1000, ring.n)
    ntt = ring.to_ntt(coeffs, len(ring.moduli))
    assert ntt.shape == (2, ring.n) and np.all(ntt < ring.q(2))
    assert np.array_equal(np.array(ring.from_ntt(ntt), dtype=np.int64), coeffs)


def test_seal_ciphertexts_read_back_in_seal_ntt_order(ring: Ring) -> None:
    """SEAL encrypts under a key we read; ``c0 + c1 s - m`` must be SEAL's small noise once our inverse NTT
    brings it back to coefficients: a wrong order or root would give residues spread over the whole prime."""
    keygen = seal.KeyGenerator(ring.context)
    secret_key = keygen.secret_key()
    s = ring.read_plaintext(secret_key.data(), 1)
    encoder = seal.CKKSEncoder(ring.context)
    plain, ct = seal.Plaintext(), seal.Ciphertext()
    encoder.encode(np.linspace(-1, 1, ring.n // 2).tolist(), 2.0**40, plain)
    seal.Encryptor(ring.context, secret_key).encrypt_symmetric(plain, ct)
    c0, c1 = ring.read_ciphertext(ct)
    noise = np.array(ring.from_ntt((c0 + c1 * s - ring.read_plaintext(plain, 1)) % ring.q(1)), dtype=np.float64)
    assert 1 < noise.std() < 5 and np.abs(noise).max() <= 20  # SEAL's error: sigma 3.2, clipped at 19.2


def test_written_plaintexts_decode_and_out_of_range_residues_are_refused(ring: Ring) -> None:
    encoder = seal.CKKSEncoder(ring.context)
    plain = seal.Plaintext()
    values = np.linspace(-3, 3, ring.n // 2)
    encoder.encode(values.tolist(), 2.0**40, plain)
    poly = ring.read_plaintext(plain, 1)
    copy = ring.plaintext(poly, list(plain.parms_id()), plain.scale)
    assert np.abs(np.array(encoder.decode_double(copy)) - values).max() < 1e-6
    poly[0, 0] = ring.moduli[0]
    with pytest.raises(InvalidCiphertext, match="does not load"):
        ring.plaintext(poly, list(plain.parms_id()), plain.scale)


def test_common_reference_polynomial_is_deterministic_uniform_and_seed_bound(ring: Ring) -> None:
    a, again, other = crp(ring, b"seed-1"), crp(ring, b"seed-1"), crp(ring, b"seed-2")
    assert np.array_equal(a, again) and not np.array_equal(a, other)
    assert np.all(a < ring.q(2))
    top = np.array(a[0], dtype=np.float64) / ring.moduli[0]
    assert abs(top.mean() - 0.5) < 0.03 and abs(top.std() - 12**-0.5) < 0.02
    assert shake_stream(b"x")(16) != shake_stream(b"y")(16)


def test_vectorised_shamir_dealing_equals_python_integer_evaluation(ring: Ring) -> None:
    """The uint64 Horner evaluation is exact: the same residues as Python integers, edge residues included."""
    rng = np.random.default_rng(3)
    degree, width = 25, 64
    coefficients = np.stack([np.stack([rng.integers(0, q, width, dtype=np.uint64) for q in ring.moduli])
                             for _ in range(degree + 1)])
    coefficients[:, :, :2] = np.array(ring.moduli, dtype=np.uint64).reshape(-1, 1) - np.array([1, 2], dtype=np.uint64)
    indices = [1, 2, 7, 50, 999, shamir.MAX_INDEX - 1]
    got = shamir.evaluate(coefficients, ring.moduli, indices)
    for x in indices:
        for limb, q in enumerate(ring.moduli):
            expected = [sum(int(coefficients[k, limb, i]) * x**k for k in range(degree + 1)) % q for i in range(width)]
            assert got[x][limb].tolist() == expected


def test_gaussian_noise_has_its_width_clip_and_independent_box_muller_halves(ring: Ring) -> None:
    """Each Box-Muller pair gives two draws (the cosine half of the polynomials, the sine half): both have the
    requested width and no bias, they are uncorrelated, and the clip holds."""
    sigma, count = 1000.0, 8
    coeffs = ring.from_ntt(ring.gaussian(sigma, 1, count=count)).astype(np.float64)  # (count, N)
    cosines, sines = coeffs.reshape(2, -1)
    for half in (cosines, sines):
        assert abs(half.std() / sigma - 1) < 0.03 and abs(half.mean()) < 5 * sigma / np.sqrt(half.size)
    assert abs(np.corrcoef(cosines, sines)[0, 1]) < 0.04
    clipped = ring.from_ntt(ring.gaussian(3.2, 1, clip=6 * 3.2, count=count))
    assert np.abs(clipped).max() <= 19 and 3.0 < clipped.std() < 3.4
