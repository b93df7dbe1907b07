"""The encrypted Gram matrix on real TenSEAL ciphertexts: maths against numpy, deterministic flooded
decryption, evaluation keys, and every refusal."""

from __future__ import annotations

import numpy as np
import pytest

from fedprompt.crypto.ckks import CkksParams, PublicContext, SecretContext
from fedprompt.crypto.errors import InvalidCiphertext, InvalidValue
from fedprompt.crypto.gram import (
    GramEvaluator,
    agreement_tolerance,
    decrypt_gram,
    evaluation_keys,
    galois_elements,
    gram_params,
    pairs,
    to_matrix,
)

PARAMS = gram_params(CkksParams())


@pytest.fixture(scope="module")
def secret() -> SecretContext:
    return SecretContext.create(PARAMS)


@pytest.fixture(scope="module")
def keys(secret: SecretContext) -> bytes:
    return evaluation_keys(secret)


@pytest.fixture(scope="module")
def public(secret: SecretContext) -> PublicContext:
    return PublicContext(secret.public_bytes(), PARAMS, secret.key_id)


@pytest.fixture(scope="module")
def evaluator(public: PublicContext, keys: bytes) -> GramEvaluator:
    return GramEvaluator(public, keys)


def encrypted(secret: SecretContext, public: PublicContext, x: np.ndarray) -> list:
    return public.parse(secret.encrypt(x, 0), public.key_id, x.size)


def test_gram_parameters_keep_128_bit_security_and_one_level() -> None:
    PARAMS.check()
    assert PARAMS.security_bits >= 128 and PARAMS.multiplicative
    assert PARAMS.num_ciphertexts(6914) == 1  # the demo's prompt: one ciphertext per update
    assert len(galois_elements(PARAMS)) == 13  # conjugation + 12 power-of-two rotations, not SEAL's 25


@pytest.mark.parametrize("size", [7, 10, 9000])  # odd, even, and two ciphertexts per update
def test_encrypted_gram_equals_numpy(secret: SecretContext, public: PublicContext, evaluator: GramEvaluator,
                                     size: int) -> None:
    rng = np.random.default_rng(size)
    x = rng.normal(0, 30.0, (4, size))
    x[2] *= 5  # a scaled update
    packed = evaluator.gram([encrypted(secret, public, row) for row in x])
    scalars = decrypt_gram(secret, packed, 4)
    want = x @ x.T
    got = to_matrix(scalars, 4)
    assert np.abs(got - want).max() <= 8 * agreement_tolerance(secret, scalars, 4)
    assert np.allclose(got, want, rtol=1e-5, atol=1e-3 * np.abs(want).max())


def test_honest_decryptions_agree_exactly(secret: SecretContext, public: PublicContext,
                                          evaluator: GramEvaluator) -> None:
    x = np.random.default_rng(1).normal(0, 1.0, (3, 20))
    packed = evaluator.gram([encrypted(secret, public, row) for row in x])
    first, second = decrypt_gram(secret, packed, 3), decrypt_gram(secret, packed, 3)
    assert np.array_equal(first, second)
    assert first.shape == (len(pairs(3)),)


def test_decryptor_refuses_anything_but_a_packed_gram(secret: SecretContext, public: PublicContext,
                                                      evaluator: GramEvaluator) -> None:
    x = np.ones(10)
    update = secret.encrypt(np.ones(1), 0)  # framed like a Gram of one update, but a fresh ciphertext
    with pytest.raises(InvalidCiphertext, match="packed Gram"):
        decrypt_gram(secret, update, 1)
    packed = evaluator.gram([encrypted(secret, public, x)] * 2)
    with pytest.raises(InvalidCiphertext, match="Gram payload for 3 updates"):
        decrypt_gram(secret, packed, 3)
    other = SecretContext.create(PARAMS)
    with pytest.raises(InvalidCiphertext, match="another key"):
        decrypt_gram(other, packed, 2)


def test_evaluation_keys_are_bound_to_the_job_key(secret: SecretContext, public: PublicContext, keys: bytes) -> None:
    other = SecretContext.create(PARAMS)
    with pytest.raises(InvalidCiphertext, match="another key"):
        GramEvaluator(public, evaluation_keys(other))
    with pytest.raises(InvalidCiphertext, match="malformed"):
        GramEvaluator(public, keys[:-10])
    with pytest.raises(InvalidCiphertext, match="shorter"):
        GramEvaluator(public, b"x")
    addition_only = SecretContext.create(CkksParams())
    with pytest.raises(InvalidCiphertext, match="rescaling prime"):
        evaluation_keys(addition_only)
    with pytest.raises(InvalidCiphertext, match="no multiplication level"):
        GramEvaluator(PublicContext(addition_only.public_bytes(), CkksParams(), addition_only.key_id), keys)
    assert len(keys) < 10 * 1024 * 1024


def test_gram_answers_must_have_the_right_shape() -> None:
    with pytest.raises(InvalidValue, match="3 finite numbers"):
        to_matrix([1.0, 2.0], 2)
    with pytest.raises(InvalidValue, match="finite"):
        to_matrix([1.0, float("nan"), 2.0], 2)
    assert to_matrix([1.0, 2.0, 3.0], 2).tolist() == [[1.0, 2.0], [2.0, 3.0]]


def test_the_registry_declares_each_kind_by_its_class() -> None:
    """Gram defences are exactly the ``GramDefence`` rules; linear ones are FedAvg on vectors or search states;
    black-box ones aggregate FedBPT search states; a rule is never both linear and a Gram defence."""
    from fedprompt.coordinator.aggregation import AGGREGATORS, FedAvg, FedBPT, FedBPTLinear, GramDefence

    assert {n for n, c in AGGREGATORS.items() if c.gram} == {n for n, c in AGGREGATORS.items() if issubclass(c, GramDefence)}
    assert {n for n, c in AGGREGATORS.items() if c.linear} == {n for n, c in AGGREGATORS.items() if issubclass(c, FedAvg)}
    assert {n for n, c in AGGREGATORS.items() if c.blackbox} == {FedBPT.name, FedBPTLinear.name}
    assert not any(c.linear and c.gram for c in AGGREGATORS.values())
