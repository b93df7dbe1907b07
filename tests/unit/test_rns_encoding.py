"""``Ring.encode_coefficients`` lays slots out as SEAL's CKKS encoder does: its plaintexts decode in SEAL to the
values, and its coefficients are SEAL's own within one unit (two FFTs, rounded); ``Ring.decode_coefficients``
decodes coefficients as SEAL's decoder does."""

from __future__ import annotations

import numpy as np
import pytest

from fedprompt.crypto.errors import InvalidValue
from fedprompt.crypto.threshold import ThresholdContext, ThresholdParams


def test_encoded_coefficients_match_seals_encoder_and_decode_in_seal() -> None:
    context = ThresholdContext(ThresholdParams(members=10))
    ring, scale = context.ring, 2.0**context.params.scale_bits
    rng = np.random.default_rng(0)
    vector = np.concatenate([rng.normal(0, 2.0, 6000), [0.0, -context.params.value_bound, context.params.value_bound]])
    slots = context.slots(vector, 20.0)
    ours = ring.encode_coefficients(slots, scale)
    assert ours.shape == (len(slots), ring.n) and ours.dtype == np.int64
    for coeffs, plain in zip(ours, context.encode(vector, 20.0), strict=True):
        seal_coeffs = ring.from_ntt(ring.read_plaintext(plain, 1))
        assert np.abs(coeffs - seal_coeffs).max() <= 1
    parms_id = list(context.seal_context.first_parms_id())
    decoded = context.decode([ring.plaintext(ring.to_ntt_residues(coeffs, 1), parms_id, scale) for coeffs in ours])
    assert np.abs(decoded[: len(vector)] - vector).max() < 1e-9
    assert abs(decoded[len(vector)] - 20.0) < 1e-9 and np.abs(decoded[len(vector) + 1 :]).max() < 1e-9


def test_decoded_coefficients_equal_seals_decoding_of_the_same_plaintexts() -> None:
    """Centred coefficients of any size up to the data prime (noise included, and values of both signs) decode in
    numpy to what SEAL's decoder gives for the plaintexts holding them, and a coefficient's sign matters."""
    context = ThresholdContext(ThresholdParams(members=10))
    ring, scale, q = context.ring, 2.0**context.params.scale_bits, context.ring.moduli[0]
    rng = np.random.default_rng(1)
    vector = np.concatenate([rng.normal(0, 50.0, 8000), [context.params.value_bound, -context.params.value_bound]])
    coeffs = ring.encode_coefficients(context.slots(vector, 7.5), scale) + rng.integers(-2**25, 2**25, (2, ring.n))
    extreme = coeffs.copy()
    extreme[0, :3] = [q // 2, -(q // 2), 0]
    parms_id = list(context.seal_context.first_parms_id())
    for polys in (coeffs, extreme):
        seal_reals = context.decode([ring.plaintext(ring.to_ntt_residues(c, 1), parms_id, scale) for c in polys])
        ours = ring.decode_coefficients(polys, scale)
        assert ours.shape == seal_reals.shape and np.abs(ours - seal_reals).max() < 1e-6
    ours = ring.decode_coefficients(coeffs, scale)
    assert np.abs(ours[: len(vector)] - vector).max() < 1e-3 and abs(ours[len(vector)] - 7.5) < 1e-3
    assert np.abs(ring.decode_coefficients(-coeffs, scale) + ours).max() < 1e-6


def test_values_beyond_the_data_prime_are_refused() -> None:
    ring = ThresholdContext(ThresholdParams(members=3)).ring
    with pytest.raises(InvalidValue):
        ring.encode_coefficients(np.full((1, ring.n // 2), 2.0**20 + 0j), 2.0**45)
