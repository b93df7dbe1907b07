"""Collective relinearisation keys (two-round RKG) in SEAL's form: a product of two ciphertexts under the
collective key, relinearised with them and rescaled, decrypts correctly through threshold decryption."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import tenseal.sealapi as seal

from fedprompt.crypto import threshold, threshold_evalkeys
from fedprompt.crypto.errors import InvalidValue
from fedprompt.crypto.threshold import KeyShare, Member, ThresholdContext, ThresholdParams
from tests.thresholds import key_setup

# The Gram defence's one-multiplication chain (crypto.gram): N = 8192, primes 60 + 40 + 40 + 60, scale 2^40.
PARAMS = ThresholdParams(members=3, poly_modulus_degree=8192, coeff_mod_bit_sizes=(60, 40, 40, 60), scale_bits=40,
                         seeded_uploads=False)
SEED = b"relin-job"


@cache
def keys() -> tuple[ThresholdContext, list[Member], dict[int, KeyShare], seal.RelinKeys]:
    context, members, shares = key_setup(PARAMS, SEED)
    ring = context.ring
    parties = [threshold_evalkeys.RelinParty(m) for m in members]
    crps = threshold_evalkeys.reference_polys(ring, SEED)
    first = threshold_evalkeys.aggregate(ring, [p.round1(crps) for p in parties], PARAMS.members)
    second = threshold_evalkeys.aggregate(ring, [p.round2(first) for p in parties], PARAMS.members)
    return context, members, shares, threshold_evalkeys.relin_keys(ring, first, second)


def product(context: ThresholdContext, relin: seal.RelinKeys, x: np.ndarray, y: np.ndarray) -> seal.Ciphertext:
    cts = []
    for vector in (x, y):
        (plain,) = context.encode(vector, 0.0)
        ct = seal.Ciphertext()
        context.encryptor.encrypt(plain, ct)
        cts.append(ct)
    out = seal.Ciphertext()
    context.evaluator.multiply(cts[0], cts[1], out)
    context.evaluator.relinearize_inplace(out, relin)
    context.evaluator.rescale_to_next_inplace(out)
    return out


def threshold_decrypt(context: ThresholdContext, shares: dict[int, KeyShare], ct: seal.Ciphertext,
                      decryptors: list[int]) -> np.ndarray:
    parts = [shares[j].decryption_share([ct], decryptors) for j in decryptors]
    return context.decode(threshold.combine(context.ring, PARAMS, [ct], parts))


def test_a_product_relinearised_with_the_collective_key_decrypts_through_t_members() -> None:
    context, _, shares, relin = keys()
    rng = np.random.default_rng(11)
    size = PARAMS.poly_modulus_degree - 1
    x, y = rng.normal(0, 1, size), rng.normal(0, 1, size)
    ct = product(context, relin, x, y)
    assert ct.size() == 2
    reals = threshold_decrypt(context, shares, ct, [1, 3])[:size - 1]
    got = reals[0::2] + 1j * reals[1::2]
    expected = (x[0:size - 1:2] + 1j * x[1:size - 1:2]) * (y[0:size - 1:2] + 1j * y[1:size - 1:2])  # complex slots
    assert np.abs(got - expected).max() < 1e-2


def test_relinearisation_with_another_key_gives_garbage() -> None:
    """The control: SEAL's own relinearisation keys for a foreign secret make the product undecryptable."""
    context, _, shares, _ = keys()
    foreign = seal.RelinKeys()
    seal.KeyGenerator(context.seal_context).create_relin_keys(foreign)
    x = np.random.default_rng(12).normal(0, 1, 100)
    reals = threshold_decrypt(context, shares, product(context, foreign, x, x), [2, 3])[:98]
    expected = (x[0:98:2] + 1j * x[1:98:2]) ** 2
    assert np.abs(reals[0::2] + 1j * reals[1::2] - expected).max() > 1


def test_every_member_answers_each_round_once() -> None:
    context, members, _, _ = keys()
    ring = context.ring
    party = threshold_evalkeys.RelinParty(members[0])
    with pytest.raises(InvalidValue, match="already used"):
        party.round1(threshold_evalkeys.reference_polys(ring, SEED))
    with pytest.raises(InvalidValue, match="each of the 3 members"):
        threshold_evalkeys.aggregate(ring, [], PARAMS.members)


def test_rotation_and_conjugation_with_collective_galois_keys_decrypt_through_t_members() -> None:
    """What the Gram computation needs of Galois keys: conjugation and slot rotations (``crypto.gram``)."""
    context, members, shares, _ = keys()
    ring = context.ring
    conjugation, rotation = 2 * PARAMS.poly_modulus_degree - 1, 3  # SEAL's elements for conj and a left step of 1
    crps = {g: threshold_evalkeys.galois_reference_polys(ring, SEED, g) for g in (conjugation, rotation)}
    answers = {g: [threshold_evalkeys.galois_share(m, crps[g], g) for m in members] for g in crps}
    galois = threshold_evalkeys.galois_keys(ring, crps, answers, PARAMS.members)
    assert galois.has_key(conjugation) and galois.has_key(rotation) and not galois.has_key(5)
    size = PARAMS.poly_modulus_degree - 1
    x = np.random.default_rng(13).normal(0, 1, size)
    (plain,) = context.encode(x, 2.0)
    ct = seal.Ciphertext()
    context.encryptor.encrypt(plain, ct)
    slots = np.append(x, 2.0)
    z = slots[0::2] + 1j * slots[1::2]
    for operation, expected in (("rotate", np.roll(z, -1)), ("conjugate", np.conj(z))):
        out = seal.Ciphertext()
        if operation == "rotate":
            context.evaluator.rotate_vector(ct, 1, galois, out)
        else:
            context.evaluator.complex_conjugate(ct, galois, out)
        reals = threshold_decrypt(context, shares, out, [1, 2] if operation == "rotate" else [2, 3])
        assert np.abs(reals[0::2] + 1j * reals[1::2] - expected).max() < 1e-2, operation
    with pytest.raises(InvalidValue, match="each of the 3 members"):
        threshold_evalkeys.galois_keys(ring, crps, {rotation: answers[rotation][:2]}, PARAMS.members)
