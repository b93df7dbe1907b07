"""Vectors <-> payload bytes, and chunked transfer with its checks (pure; used by both sides).

Chunking keeps every gRPC message small, so no payload size is ever capped by gRPC's message limit; the
receiver validates the header first and then each chunk (order, count, running size, final digest).
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np

from fedprompt.errors import InvalidUpdate, PayloadTooLarge, quoted
from fedprompt.protocol import Payload, PayloadHeader

FLOAT32 = "float32-le"
CHUNK_BYTES = 256 * 1024


def encode_vector(vector: np.ndarray) -> bytes:
    """A 1-D float vector as little-endian float32 bytes."""
    flat = np.ascontiguousarray(vector, dtype="<f4").reshape(-1)
    return flat.tobytes()


def decode_vector(payload: Payload, expected_size: int) -> np.ndarray:
    """Decode a plaintext payload, refusing a wrong encoding, a wrong size and non-finite values."""
    if payload.encoding != FLOAT32:
        raise InvalidUpdate(f"encoding {quoted(payload.encoding)} is not {FLOAT32!r}")
    if payload.vector_size != expected_size or len(payload.data) != 4 * expected_size:
        raise InvalidUpdate(
            f"vector has {len(payload.data) // 4} floats (header says {payload.vector_size}), expected {expected_size}"
        )
    vector = np.frombuffer(payload.data, dtype="<f4").astype(np.float32)
    if not np.isfinite(vector).all():
        raise InvalidUpdate("vector contains NaN or Inf")
    return vector


def search_state(vector: np.ndarray) -> tuple[np.ndarray, float]:
    """Split a black-box (FedBPT) vector ``[z_1 .. z_d, sigma]`` into the search mean z and step size sigma."""
    if vector.ndim != 1 or vector.size < 2:
        raise InvalidUpdate(f"a search state needs at least 2 floats, got shape {vector.shape}")
    return vector[:-1], float(vector[-1])


def pack_search_state(mean: np.ndarray, sigma: float) -> np.ndarray:
    """The exchanged black-box vector ``[mean..., sigma]`` as float32 (the inverse of ``search_state``)."""
    return np.append(np.asarray(mean, dtype=np.float32), np.float32(sigma))


def chunks(data: bytes, size: int = CHUNK_BYTES) -> list[bytes]:
    """Split bytes into chunks of at most ``size``; an empty payload is one empty chunk."""
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


class ChunkAssembler:
    """Reassembles one payload from a validated header and its chunks, enforcing the limits as it goes."""

    def __init__(self, header: PayloadHeader, max_bytes: int, max_chunks: int = 4096) -> None:
        if header.total_bytes > max_bytes:
            raise PayloadTooLarge(f"payload of {header.total_bytes} bytes exceeds the limit of {max_bytes}")
        if not 1 <= header.num_chunks <= min(max_chunks, max(1, header.total_bytes)):
            raise InvalidUpdate(f"num_chunks {header.num_chunks} is outside [1, {max_chunks}] or exceeds the "
                                f"{header.total_bytes} bytes announced (chunks are never empty)")
        if len(header.sha256) != 32:
            raise InvalidUpdate("header lacks a 32-byte SHA-256 digest")
        self.header = header
        self.num_chunks = header.num_chunks
        self.total_bytes = header.total_bytes
        self._parts: list[bytes] = []
        self._received = 0

    def add(self, index: int, data: bytes) -> None:
        if index != len(self._parts):
            raise InvalidUpdate(f"chunk {index} out of order (expected {len(self._parts)})")
        if index >= self.num_chunks:
            raise InvalidUpdate(f"more chunks than the {self.num_chunks} announced")
        if not data and self.total_bytes > 0:
            raise InvalidUpdate(f"chunk {index} is empty")
        self._received += len(data)
        if self._received > self.total_bytes:
            raise PayloadTooLarge(f"chunks exceed the announced {self.total_bytes} bytes")
        self._parts.append(data)

    def finish(self) -> Payload:
        """The assembled payload; fails on missing chunks, short data or a digest mismatch."""
        if len(self._parts) != self.num_chunks:
            raise InvalidUpdate(f"received {len(self._parts)} of {self.num_chunks} chunks")
        data = b"".join(self._parts)
        if len(data) != self.total_bytes:
            raise InvalidUpdate(f"received {len(data)} bytes, header announced {self.total_bytes}")
        if not hmac.compare_digest(hashlib.sha256(data).digest(), self.header.sha256):
            raise InvalidUpdate("SHA-256 digest does not match the header")
        h = self.header
        return Payload(h.job_id, h.round, h.encoding, h.vector_size, data, h.num_examples)
