"""Vector encoding and chunk reassembly: every malformed transfer is refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedprompt.errors import InvalidUpdate, PayloadTooLarge
from fedprompt.protocol import Payload
from fedprompt.wire.payload import FLOAT32, ChunkAssembler, chunks, decode_vector, encode_vector


def assemble(payload: Payload, size: int, max_bytes: int = 10**6) -> Payload:
    header = payload.header(size)
    assembler = ChunkAssembler(header, max_bytes)
    for i, part in enumerate(chunks(payload.data, size)):
        assembler.add(i, part)
    return assembler.finish()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=300), st.integers(1, 64))
def test_round_trip_any_vector_any_chunk_size(values: list[float], chunk: int) -> None:
    vector = np.asarray(values, dtype=np.float32)
    payload = Payload("j", 1, FLOAT32, vector.size, encode_vector(vector), 3)
    back = assemble(payload, chunk)
    np.testing.assert_array_equal(decode_vector(back, vector.size), vector)


def test_refusals() -> None:
    payload = Payload("j", 1, FLOAT32, 4, encode_vector(np.ones(4, np.float32)), 1)
    with pytest.raises(PayloadTooLarge):
        ChunkAssembler(payload.header(4), max_bytes=8)
    assembler = ChunkAssembler(payload.header(4), 1000)
    with pytest.raises(InvalidUpdate, match="out of order"):
        assembler.add(1, b"abcd")
    assembler.add(0, payload.data[:4])
    with pytest.raises(InvalidUpdate, match="received 1 of 4"):
        assembler.finish()
    with pytest.raises(InvalidUpdate, match="expected 5"):
        decode_vector(payload, 5)
    with pytest.raises(InvalidUpdate, match="NaN"):
        decode_vector(Payload("j", 1, FLOAT32, 1, encode_vector(np.array([np.inf], np.float32))), 1)
