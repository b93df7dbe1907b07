"""``Ring.expand_seed`` reproduces SEAL's own expansion of a seeded ciphertext's c1, rejections included."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import tenseal.sealapi as seal

from fedprompt.crypto.rns import Ring
from fedprompt.crypto.threshold import ThresholdContext, ThresholdParams

#: An NTT-friendly 60-bit prime (1 mod 2 * 4096) just under 2^64 / 16.5: SEAL rejects ~3 % of the 64-bit words
#: it draws (those at or above the largest multiple of it below 2^64, less one), where its default primes, just
#: under a power of two, reject almost none.
REJECTING_PRIME = 1117984489315786753


def rejecting_ring() -> Ring:
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(4096)
    parms.set_coeff_modulus([seal.Modulus(REJECTING_PRIME)])
    return Ring(seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.NONE))


@pytest.mark.parametrize("rejecting", [False, True], ids=["threshold defaults", "frequent rejections"])
def test_seed_expansion_equals_what_seals_loader_expands(rejecting: bool) -> None:
    ring = rejecting_ring() if rejecting else ThresholdContext(ThresholdParams(members=3)).ring
    parms_id = list(ring.context.first_parms_id())
    q = ring.moduli[0]
    ceiling = 2**64 - 1 - (2**64 - 1) % q - 1
    rejections = 0
    for k in range(20):
        seed = hashlib.shake_256(b"expand-seed-test" + bytes([k])).digest(64)
        zero = np.zeros((1, ring.n), dtype=np.uint64)
        loaded = ring._load(seal.Ciphertext(), ring.seeded_ciphertext_bytes(parms_id, zero, seed, 1.0))
        assert np.array_equal(ring.expand_seed(seed, 1), ring.read_ciphertext(loaded)[1])
        drawn = np.frombuffer(b"".join(hashlib.shake_256(seed + b.to_bytes(8, "little")).digest(4096)
                                       for b in range(8)), dtype=np.uint64)
        rejections += int(np.count_nonzero(drawn >= np.uint64(ceiling)))
    assert rejections > 1000 if rejecting else rejections == 0
