"""CKKS secure aggregation: real TenSEAL ciphertexts, parameters, and every parse-time refusal."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedprompt.crypto.ckks import CkksParams, PublicContext, SecretContext
from fedprompt.crypto.errors import InvalidCiphertext, InvalidValue, ParameterError

PARAMS = CkksParams()
SIZE = 5000  # two ciphertexts with the weight slot


def test_default_parameters_meet_the_standard() -> None:
    PARAMS.check()
    assert PARAMS.security_bits >= 128
    assert PARAMS.num_ciphertexts(SIZE) == 2
    assert PARAMS.describe()["security_bits"] == PARAMS.security_bits


@pytest.mark.parametrize("field,value,key", [
    ("coeff_mod_bit_sizes", (60, 60), "he.coeff_mod_bit_sizes"),
    ("poly_modulus_degree", 2048, "he.poly_modulus_degree"),
    ("scale_bits", 55, "he.scale_bits"),
    ("max_summands", 0, "he.max_summands"),
])
def test_bad_parameters_name_their_key(field: str, value: Any, key: str) -> None:
    from dataclasses import replace

    with pytest.raises(ParameterError, match=key):
        replace(PARAMS, **{field: value}).check()


@settings(max_examples=12, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 500), st.integers(0, 2**32 - 1)), min_size=1, max_size=6))
def test_decrypt_of_folded_sum_is_the_weighted_sum(secret: SecretContext, public: PublicContext,
                                                   terms: list[tuple[int, int]]) -> None:
    total = public.new_sum(SIZE)
    expected = np.zeros(SIZE)
    for count, seed in terms:
        delta = np.random.default_rng(seed).normal(0, 0.5, SIZE)
        total.add(total.parse(secret.encrypt(delta * count, count)))
        expected += delta * count
    vector, weight = secret.decrypt(total.to_bytes(), SIZE)
    assert weight == sum(w for w, _ in terms)
    assert np.abs(vector - expected).max() < 1e-4
    assert np.abs(vector / weight - expected / weight).max() < 1e-6


def test_public_context_refuses_a_secret_key(secret: SecretContext) -> None:
    with pytest.raises(InvalidCiphertext, match="secret key"):
        PublicContext(secret.secret_bytes(), PARAMS, secret.key_id)


def test_public_context_carries_no_key_material(secret: SecretContext) -> None:
    public = secret.public_bytes()
    assert len(public) < 200
    assert not PublicContext(public, PARAMS, secret.key_id).ctx.has_public_key()


def test_upload_is_small(secret: SecretContext) -> None:
    data = secret.encrypt(np.zeros(6144), 1)
    assert len(data) / (4 * 6144) < 3.0


def test_other_key_is_refused(public: PublicContext) -> None:
    other = SecretContext.create(PARAMS)
    with pytest.raises(InvalidCiphertext, match="another key"):
        public.new_sum(SIZE).parse(other.encrypt(np.zeros(SIZE), 1))


def test_truncated_tampered_and_miscounted_are_refused(secret: SecretContext, public: PublicContext) -> None:
    good = secret.encrypt(np.ones(SIZE), 1)
    total = public.new_sum(SIZE)
    with pytest.raises(InvalidCiphertext, match="truncated"):
        total.parse(good[:-100])
    with pytest.raises(InvalidCiphertext, match="parameters"):
        public.new_sum(SIZE - 4096).parse(good)
    small = secret.encrypt(np.ones(100), 1)
    with pytest.raises(InvalidCiphertext, match="ciphertexts"):
        public.new_sum(100).parse(small[:41] + (2).to_bytes(2, "little") + small[43:])
    tampered = bytearray(good)
    tampered[60:120] = b"\xff" * 60
    with pytest.raises(InvalidCiphertext, match="does not parse"):
        total.parse(bytes(tampered))
    assert total.count == 0


def test_out_of_range_values_are_refused_before_encryption(secret: SecretContext) -> None:
    with pytest.raises(InvalidValue, match="range"):
        secret.encrypt(np.full(10, PARAMS.value_bound * 2), 1)
    with pytest.raises(InvalidValue, match="NaN"):
        secret.encrypt(np.full(10, np.nan), 1)


def test_wrong_key_decryption_is_detected(public: PublicContext) -> None:
    a, b = SecretContext.create(PARAMS), SecretContext.create(PARAMS)
    data = a.encrypt(np.ones(10), 3)
    forged = data[:5] + b.key_id + data[37:]
    with pytest.raises(InvalidCiphertext):
        b.decrypt(forged, 10)
