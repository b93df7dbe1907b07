"""Masked decryption shares: the relay adds them to a seeded sum without learning it, so a member downloads one
compressed polynomial per chunk instead of the compressed ``c0`` and t full-width shares.

Decryptor ``j`` of a round attempt sends ``d_j + r_j`` per chunk, where ``d_j = a_r lambda_j^T sigma_{U,j} + e_j``
is its flooded share (``crypto.threshold_seeded.round_share``) and ``r_j`` is uniform mod the data prime, drawn
from SHAKE-256 under a key derived (HMAC-SHA-256) from the members' group key (``crypto.sealing.group_key``,
which the relay never holds), the round attempt's label and ``j``.  The relay adds ``c0`` of the sum and every
masked share, ``y = c0 + sum_j (d_j + r_j) = Delta m + e + sum_j e_j + R``, and compresses ``y`` with the same
key-less modulus switching as ``c0`` alone (``ThresholdContext.compress``, :attr:`ThresholdParams.
download_bits`).  A member lifts the download, subtracts ``R = sum_j r_j`` and decodes.

Why this keeps the guarantees (``docs/he.md``, "Masked decryption shares"):

* *The relay learns nothing.*  Each ``r_j`` is a one-time pad over ``Z_q^N``: its label binds job, round,
  attempt, member and chunk, and a member makes one share per round attempt (its on-disk record), so no mask
  is used twice.  ``d_j + r_j`` and ``y`` are uniform to anyone without the group key.
* *Members learn less than before.*  They see ``c0 + sum_j d_j`` only, not each ``d_j``; the smudging is sized
  for a coalition that sees every share (the coordinator plus t - 1 members, who hold the group key and can
  strip the masks), so that argument is unchanged.
* *Rounding is post-processing.*  ``y`` is rounded after the flooding, by a public function, so the key stays
  hidden exactly as before; it only adds error, bounded as for ``c0`` alone.
* *Integrity as before.*  A relay or decryptor that alters a masked share without the group key turns the
  result into uniform garbage, refused by the weight-slot check; adding a chosen offset it could already do to
  ``c0`` (an aggregate ciphertext is malleable), and the weight slot catches what touches the weight.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Mapping, Sequence

import numpy as np
import tenseal.sealapi as seal

from fedprompt.crypto.ckks import _saved
from fedprompt.crypto.errors import InvalidCiphertext
from fedprompt.crypto.rns import Poly, shake_stream
from fedprompt.crypto.threshold import KeyShare, ThresholdContext, share_polys
from fedprompt.crypto.threshold_seeded import UploadRound, reference_polys, round_share

_MASKED = struct.Struct("<5sHI")
_MAGIC = b"FPTM1"
_DOMAIN = b"fedprompt-share-mask-v1\0"


def masks(context: ThresholdContext, group: bytes, upload: UploadRound, member: int, chunks: int) -> list[Poly]:
    """``r_j`` of member ``member`` for each chunk of ``upload``: uniform mod the data prime, keyed by ``group``."""
    key = hmac.new(group, _DOMAIN + upload.label + struct.pack("<H", member), hashlib.sha256).digest()
    stream = shake_stream(key)
    return [context.ring.uniform(1, stream) for _ in range(chunks)]


def masked_share(context: ThresholdContext, key: KeyShare, group: bytes, vector_size: int, upload: UploadRound,
                 uploaders: Sequence[int], decryptors: Sequence[int]) -> bytes:
    """``d_j + r_j`` per chunk: ``key``'s flooded share of the uploaders' sum for the decryptor set, masked for the
    relay (once per member and round attempt, as ``KeyShare.flooded`` enforces)."""
    chunks = context.params.num_ciphertexts(vector_size)
    share = round_share(context, key, reference_polys(context, upload, chunks), upload, uploaders, decryptors)
    _, _, _, polys = share_polys(context.ring, share, chunks, 1)
    q = context.ring.q(1)
    masked = [(d + r) % q for d, r in zip(polys, masks(context, group, upload, key.index, chunks), strict=True)]
    return _MASKED.pack(_MAGIC, key.index, chunks) + b"".join(np.asarray(m, dtype=np.uint64).tobytes()
                                                              for m in masked)


def parse_share(context: ThresholdContext, blob: bytes, member: int, chunks: int) -> list[Poly]:
    """A masked share's polynomials, checked for its member, its size and every residue below the prime."""
    if len(blob) < _MASKED.size or _MASKED.unpack_from(blob) != (_MAGIC, member, chunks):
        raise InvalidCiphertext(f"not a masked decryption share of member {member} for {chunks} chunks")
    ring = context.ring
    if len(blob) != _MASKED.size + chunks * ring.n * 8:
        raise InvalidCiphertext(f"a masked decryption share of {chunks} chunks has {chunks * ring.n * 8 + _MASKED.size}"
                                f" bytes, got {len(blob)}")
    values = np.frombuffer(blob, dtype=np.uint64, offset=_MASKED.size).reshape(chunks, 1, ring.n)
    if not np.all(values < np.uint64(ring.moduli[0])):
        raise InvalidCiphertext("a masked decryption share holds a residue beyond its prime")
    return list(values.astype(object))


def combine(context: ThresholdContext, data: bytes, vector_size: int, shares: Mapping[int, bytes]) -> bytes:
    """The relay's download, key-less: the sum's ``c0`` plus every decryptor's masked share (by member index),
    compressed (``ThresholdContext.compress``).  Only members, who can strip the masks, can read it."""
    cts = context.parse_sum(data, vector_size)
    total = [np.zeros((1, context.ring.n), dtype=object) for _ in cts]
    for member, blob in sorted(shares.items()):
        total = [t + p for t, p in zip(total, parse_share(context, blob, member, len(cts)), strict=True)]
    q = context.ring.q(1)
    for ct, masked in zip(cts, total, strict=True):
        context.evaluator.add_plain_inplace(ct, context.ring.plaintext(masked % q, list(ct.parms_id()), ct.scale))
    return context.compress(context.frame(context.key_id, vector_size, [_saved(ct.save) for ct in cts]),
                            vector_size)


def open_sum(context: ThresholdContext, blob: bytes, vector_size: int, group: bytes, upload: UploadRound,
             decryptors: Sequence[int]) -> tuple[np.ndarray, float]:
    """(vector, weight) of a combined download: lifted, its masks removed, decoded, the weight slot checked."""
    ring, q = context.ring, context.ring.q(1)
    chunks = context.params.num_ciphertexts(vector_size)
    zeros = [np.zeros((1, ring.n), dtype=object)] * chunks
    cts = context.parse_sum(context.expand(blob, vector_size, zeros), vector_size)
    mask = [np.zeros((1, ring.n), dtype=object) for _ in cts]
    for member in sorted(set(decryptors)):
        mask = [m + r for m, r in zip(mask, masks(context, group, upload, member, chunks), strict=True)]
    plains: list[seal.Plaintext] = [ring.plaintext((ring.read_ciphertext(ct)[0] - m) % q, list(ct.parms_id()),
                                                   ct.scale) for ct, m in zip(cts, mask, strict=True)]
    return context.checked(context.decode(plains), vector_size)
