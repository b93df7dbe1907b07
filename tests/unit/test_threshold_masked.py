"""Masked decryption shares with real SEAL ciphertexts: the relay adds t masked shares to a seeded sum and
compresses it key-less; members holding the group key unmask and decode it, while without the key, under another
member's mask or with a tampered share it decodes to garbage, refused by the weight slot."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fedprompt.crypto import shamir
from fedprompt.crypto import threshold_masked as masked
from fedprompt.crypto.errors import InvalidCiphertext, InvalidValue
from fedprompt.crypto.modarith import mulmod, submod
from fedprompt.crypto.threshold_seeded import UploadRound, reference_polys
from tests.thresholds import SIZE, job, uploads

SEED = b"job-seed-masked"
GROUP = os.urandom(32)


@pytest.mark.parametrize("members,uploaders,decryptors", [(3, [1, 2, 3], [1, 3]), (5, [1, 2, 4], [2, 4, 5])])
def test_members_unmask_the_combined_download_of_any_t_decryptors(
        members: int, uploaders: list[int], decryptors: list[int]) -> None:
    """One compressed polynomial per chunk, the size of a compressed ``c0``, decrypting within 1e-4."""
    j = job(members, seeded=True)
    upload = UploadRound(SEED, round=members)
    data, expected, weight = uploads(j, upload, uploaders)
    shares = {d: masked.masked_share(j.context, j.keys[d], GROUP, SIZE, upload, uploaders, decryptors)
              for d in decryptors}
    blob = masked.combine(j.context, data, SIZE, shares)
    assert len(blob) == len(j.context.compress(data, SIZE))
    vector, got = masked.open_sum(j.context, blob, SIZE, GROUP, upload, decryptors)
    assert abs(got - weight) <= 1e-4 and np.abs(vector - expected).max() <= 1e-4


def test_without_the_group_key_or_with_a_wrong_share_the_download_is_garbage() -> None:
    j = job(3, seeded=True)
    upload, decryptors = UploadRound(SEED, round=7), [1, 2]
    data, _, _ = uploads(j, upload, [1, 2, 3])
    shares = {d: masked.masked_share(j.context, j.keys[d], GROUP, SIZE, upload, [1, 2, 3], decryptors)
              for d in decryptors}
    with pytest.raises(InvalidValue, match="already made a decryption share"):  # one mask use per attempt
        masked.masked_share(j.context, j.keys[1], GROUP, SIZE, upload, [1, 2, 3], decryptors)
    blob = masked.combine(j.context, data, SIZE, shares)
    with pytest.raises(InvalidCiphertext, match="exceed what a sum can hold|weight"):  # coordinator's view: no group key
        masked.open_sum(j.context, blob, SIZE, os.urandom(32), upload, decryptors)
    with pytest.raises(InvalidCiphertext, match="exceed what a sum can hold|weight"):  # unmasked as another attempt's
        masked.open_sum(j.context, blob, SIZE, GROUP, UploadRound(SEED, round=7, attempt=1), decryptors)
    tampered = dict(shares)
    raw = bytearray(shares[2])
    raw[-8:] = bytes(8)
    tampered[2] = bytes(raw)
    with pytest.raises(InvalidCiphertext, match="exceed what a sum can hold|weight"):
        masked.open_sum(j.context, masked.combine(j.context, data, SIZE, tampered), SIZE, GROUP, upload, decryptors)


def test_a_masked_share_is_checked_for_its_member_size_and_residues() -> None:
    j = job(3, seeded=True)
    upload = UploadRound(SEED, round=8)
    share = masked.masked_share(j.context, j.keys[1], GROUP, SIZE, upload, [1, 2, 3], [1, 2])
    assert len(masked.parse_share(j.context, share, 1, 1)) == 1
    with pytest.raises(InvalidCiphertext, match="of member 2"):
        masked.parse_share(j.context, share, 2, 1)
    with pytest.raises(InvalidCiphertext, match="bytes"):
        masked.parse_share(j.context, share[:-8], 1, 1)
    with pytest.raises(InvalidCiphertext, match="beyond its prime"):
        masked.parse_share(j.context, share[:-8] + b"\xff" * 8, 1, 1)
    with pytest.raises(InvalidCiphertext, match="format b'FPTM1'.*another fedprompt version"):
        masked.parse_share(j.context, b"FPTM1" + share[5:], 1, 1)  # what a member before format 2 sends


def test_a_masked_share_is_the_flooded_share_in_the_ntt_domain() -> None:
    """Less the transform of its pad, a decryptor's share is ``a_r lambda sigma_U`` plus the transform of noise of
    the smudging width drawn on the coefficients (noise or a pad added in the NTT domain would look uniform on the
    coefficients here)."""
    j = job(3, seeded=True)
    context, ring, q = j.context, j.context.ring, np.uint64(j.context.ring.moduli[0])
    upload, uploaders, decryptors = UploadRound(SEED, round=11), [1, 2, 3], [1, 3]
    share = masked.masked_share(context, j.keys[1], GROUP, SIZE, upload, uploaders, decryptors)
    weighted = mulmod(shamir.lagrange(ring, decryptors, 1, 1), j.keys[1].share_of(uploaders)[:1], ring.moduli[:1])
    for poly, pad, a in zip(masked.parse_share(context, share, 1, 1), masked.masks(context, GROUP, upload, 1, 1),
                            reference_polys(context, upload, 1), strict=True):
        unmasked = submod(poly, ring.to_ntt_residues(pad.astype(np.int64), 1)[0], q)
        noise = ring.from_ntt(submod(unmasked, mulmod(a, weighted, ring.moduli[:1]), q))
        assert abs(noise.std() / j.params.smudging_sigma - 1) < 0.05 and abs(noise.mean()) < j.params.smudging_sigma
