"""Checking encrypted vectors without seeing an update (``crypto.audit``), on real CKKS ciphertexts: an honest
update passes masked and shows its weight, one under another key (relabelled with the job's key id) or with
values beyond the encryptable range fails, and so does any aggregate that holds one."""

from __future__ import annotations

import numpy as np
import pytest

from fedprompt.crypto.audit import MAX_MASK, Verdict, check, mask, mask_bound
from fedprompt.crypto.ckks import CkksParams, PublicContext, SecretContext
from fedprompt.crypto.errors import InvalidCiphertext
from fedprompt.crypto.gram import gram_params
from tests.fakes import relabelled

PARAMS = CkksParams()
SIZE = 5000  # two ciphertexts: the weight slot in the second


def update(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.5, SIZE) * 20


def test_an_honest_update_passes_masked_and_shows_only_its_weight(secret: SecretContext,
                                                                  public: PublicContext) -> None:
    data = secret.encrypt(update(0), 20)
    masked = mask(public, data, SIZE)
    assert check(secret, masked, SIZE, masked=True) == Verdict(True, 20.0)
    seen = secret.decrypt_reals(masked, SIZE)[:SIZE]
    assert np.abs(seen - update(0)).mean() > mask_bound(PARAMS) / 4  # the values are hidden under the mask
    assert not np.array_equal(mask(public, data, SIZE), masked)  # a fresh mask every time


@pytest.mark.parametrize("weight", [0, 1, 20, 1000])
def test_on_the_gram_chain_a_masked_update_still_shows_its_exact_weight(weight: int) -> None:
    """The one-multiplication chain (a Gram defence, cohort discovery) allows sums up to 2^98: a mask that
    large would blur the weight slot by 1e13 and quarantine every honest member.  The capped mask keeps it
    exact (a Gram defence's updates carry 0 there) while a foreign ciphertext still fails."""
    params = gram_params(PARAMS)
    secret = SecretContext.create(params)
    public = PublicContext(secret.public_bytes(), params, secret.key_id)
    assert mask_bound(params) == MAX_MASK < (params.sum_bound - params.value_bound) / 2
    data = secret.encrypt(update(6) * max(weight, 1), weight)
    for _ in range(3):
        assert check(secret, mask(public, data, SIZE), SIZE, masked=True) == Verdict(True, float(weight))
    foreign = relabelled(SecretContext.create(params).encrypt(update(7), weight), secret.key_id)
    assert check(secret, mask(public, foreign, SIZE), SIZE, masked=True).valid is False


def test_an_update_under_another_key_fails_masked_and_spoils_the_aggregate(secret: SecretContext,
                                                                          public: PublicContext) -> None:
    foreign = relabelled(SecretContext.create(PARAMS).encrypt(update(1), 20), secret.key_id)
    assert check(secret, mask(public, foreign, SIZE), SIZE, masked=True).valid is False
    total = public.new_sum(SIZE)
    for data in (secret.encrypt(update(2), 20), foreign):
        total.add(total.parse(data))
    assert check(secret, total.to_bytes(), SIZE, masked=False).valid is False
    with pytest.raises(InvalidCiphertext):
        secret.decrypt(total.to_bytes(), SIZE)


@pytest.mark.parametrize("position", [0, SIZE - 1])
def test_one_value_that_would_make_a_sum_wrap_fails_the_check_whatever_the_mask(
        secret: SecretContext, public: PublicContext, position: int) -> None:
    """A member may skip its own range check (``SecretContext.encrypt`` refuses such a vector); one value
    beyond ``sum_bound``, in either ciphertext, fails the masked check every time."""
    vector = update(3)
    vector[position] = 1.5 * PARAMS.sum_bound
    oversized = _encrypt_unchecked(secret, vector, 20)
    assert all(not check(secret, mask(public, oversized, SIZE), SIZE, masked=True).valid for _ in range(5))
    vector[position] = PARAMS.value_bound  # the largest value an honest member may send passes
    assert check(secret, mask(public, _encrypt_unchecked(secret, vector, 20), SIZE), SIZE, masked=True).valid


def test_an_honest_aggregate_passes_with_its_total_weight(secret: SecretContext, public: PublicContext) -> None:
    total = public.new_sum(SIZE)
    for seed, weight in ((4, 10), (5, 30)):
        total.add(total.parse(secret.encrypt(update(seed), weight)))
    assert check(secret, total.to_bytes(), SIZE, masked=False) == Verdict(True, 40.0)


def _encrypt_unchecked(secret: SecretContext, vector: np.ndarray, weight: float) -> bytes:
    """What a member that skips ``SecretContext.encrypt``'s range check could send: the same encoding."""
    import tenseal.sealapi as seal

    from fedprompt.crypto.ckks import _saved

    reals = np.concatenate([vector, [weight]])
    per = PARAMS.reals_per_ciphertext
    padded = np.zeros(PARAMS.num_ciphertexts(SIZE) * per)
    padded[: len(reals)] = reals
    blobs = []
    for start in range(0, len(padded), per):
        chunk = padded[start : start + per]
        plain = seal.Plaintext()
        secret.encoder.encode((chunk[0::2] + 1j * chunk[1::2]).tolist(), 2.0 ** PARAMS.scale_bits, plain)
        blobs.append(_saved(secret.encryptor.encrypt_symmetric(plain).save))
    return secret.frame(secret.key_id, SIZE, blobs)
