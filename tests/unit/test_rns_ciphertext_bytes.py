"""Ciphertexts written as SEAL's uncompressed serialisation load in SEAL and are read back from the bytes
only when every byte before the residues is exactly what SEAL would load as such a ciphertext; SEAL's own
(zstd-compressed) serialisation of one is read back in memory to the same residues."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal.sealapi as seal

from fedprompt.crypto.ckks import _saved
from fedprompt.crypto.errors import InvalidCiphertext
from fedprompt.crypto.threshold import ThresholdContext, ThresholdParams


def test_uncompressed_ciphertexts_round_trip_through_seal_and_the_bytes() -> None:
    context = ThresholdContext(ThresholdParams(members=3))
    ring, parms_id, scale = context.ring, list(context.seal_context.first_parms_id()), 2.0**45
    rng = np.random.default_rng(0)
    c0, c1 = (rng.integers(0, ring.moduli[0], (1, ring.n), dtype=np.uint64) for _ in range(2))
    c0[0, :2] = [0, ring.moduli[0] - 1]
    blob = ring.ciphertext_bytes(parms_id, c0, c1, scale)
    loaded = ring._load(seal.Ciphertext(), blob)
    assert loaded.parms_id() == parms_id and loaded.scale == scale and loaded.is_ntt_form()
    from_seal = ring.read_parts(loaded, 2)
    from_bytes = ring.parse_ciphertext(blob, parms_id, scale, 1)
    assert from_bytes is not None
    for got, seal_read, wrote in zip(from_bytes, from_seal, (c0, c1), strict=True):
        assert np.array_equal(got, wrote[0:1]) and np.array_equal(seal_read, wrote)
    compressed = _saved(loaded.save)  # SEAL's own form: zstd
    assert compressed[5] == 2 and compressed != blob
    for got, wrote in zip(ring.parse_ciphertext(compressed, parms_id, scale, 1) or [], (c0, c1), strict=True):
        assert np.array_equal(got, wrote)
    assert ring.parse_ciphertext(compressed[:-1], parms_id, scale, 1) is None  # truncated: its header's size differs
    assert ring.parse_ciphertext(compressed[:5] + b"\x07" + compressed[6:], parms_id, scale, 1) is None  # unknown mode
    assert ring.parse_ciphertext(compressed, parms_id, scale, 2) is None  # inflates to another size than expected
    assert ring.parse_ciphertext(blob, parms_id, 2.0**40, 1) is None  # another scale
    assert ring.parse_ciphertext(blob[:-8], parms_id, scale, 1) is None  # truncated
    beyond = ring.ciphertext_bytes(parms_id, np.full((1, ring.n), ring.moduli[0], dtype=np.uint64), c1, scale)
    with pytest.raises(InvalidCiphertext):
        ring.parse_ciphertext(beyond, parms_id, scale, 1)
