"""A compressed download's bit packing: ``bits``-bit fields, big-endian, concatenated, exactly as the big integer
their bits spell, and read back, for every width and for counts that leave a partial byte or word."""

from __future__ import annotations

import numpy as np
import pytest

from fedprompt.crypto.errors import InvalidCiphertext
from fedprompt.crypto.rns import pack_bits, unpack_bits


@pytest.mark.parametrize("bits", [1, 7, 8, 13, 33, 39, 40, 57, 60, 63, 64])
@pytest.mark.parametrize("count", [1, 13, 4096])
def test_fields_are_the_big_integer_their_bits_spell_and_read_back(bits: int, count: int) -> None:
    rng = np.random.default_rng(bits * 10_000 + count)
    values = rng.integers(0, 2**63, count, dtype=np.uint64) >> np.uint64(63 - min(bits, 63))
    if bits == 64:
        values = values * np.uint64(2) + np.uint64(1)  # the top and bottom bits set
    values[0] = np.uint64(2**bits - 1)  # every bit of a field set, next to a random one
    data = pack_bits(values, bits)
    total = count * bits
    spelled = sum(int(v) << (total - (i + 1) * bits) for i, v in enumerate(values)) << (-total % 8)
    assert data == spelled.to_bytes(-(-total // 8), "big")
    assert np.array_equal(unpack_bits(data, bits, count), values)
    with pytest.raises(InvalidCiphertext, match="bytes"):
        unpack_bits(data + b"\0", bits, count)
