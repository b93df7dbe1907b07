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
_SUM_PURPOSE = b"public-key-sum\0"


def masks(context: ThresholdContext, group: bytes, upload: UploadRound, member: int, chunks: int,
          limbs: int = 1, purpose: bytes = b"") -> list[Poly]:
    """``r_j`` of member ``member`` for each chunk of ``upload``: uniform mod each of the first ``limbs`` data
    primes (one for a seeded sum), keyed by ``group``; ``purpose`` separates a public-key sum's masks
    (:data:`_SUM_PURPOSE`) from a seeded sum's of the same round attempt, so no pad serves two shares."""
    key = hmac.new(group, _DOMAIN + purpose + upload.label + struct.pack("<H", member), hashlib.sha256).digest()
    stream = shake_stream(key)
    return [context.ring.uniform(limbs, stream) for _ in range(chunks)]


def masked_share(context: ThresholdContext, key: KeyShare, group: bytes, vector_size: int, upload: UploadRound,
                 uploaders: Sequence[int], decryptors: Sequence[int]) -> bytes:
    """``d_j + r_j`` per chunk: ``key``'s flooded share of the uploaders' sum for the decryptor set, masked for the
    relay (once per member and round attempt, as ``KeyShare.flooded`` enforces)."""
    chunks = context.params.num_ciphertexts(vector_size)
    share = round_share(context, key, reference_polys(context, upload, chunks), upload, uploaders, decryptors)
    _, _, _, polys = share_polys(context.ring, share, chunks, 1)
    return _pack(key.index, _mask(context, polys, group, upload, key.index, 1))


def parse_share(context: ThresholdContext, blob: bytes, member: int, chunks: int, limbs: int = 1) -> list[Poly]:
    """A masked share's polynomials, checked for its member, its size and every residue below its prime."""
    if len(blob) < _MASKED.size or _MASKED.unpack_from(blob) != (_MAGIC, member, chunks):
        raise InvalidCiphertext(f"not a masked decryption share of member {member} for {chunks} chunks")
    ring = context.ring
    expected = _MASKED.size + chunks * limbs * ring.n * 8
    if len(blob) != expected:
        raise InvalidCiphertext(f"a masked decryption share of {chunks} chunks has {expected} bytes, got {len(blob)}")
    values = np.frombuffer(blob, dtype=np.uint64, offset=_MASKED.size).reshape(chunks, limbs, ring.n)
    if not np.all(values < np.array(ring.moduli[:limbs], dtype=np.uint64).reshape(-1, 1)):
        raise InvalidCiphertext("a masked decryption share holds a residue beyond its prime")
    return list(values.astype(object))


def _pack(member: int, polys: Sequence[Poly]) -> bytes:
    return _MASKED.pack(_MAGIC, member, len(polys)) + b"".join(np.asarray(p, dtype=np.uint64).tobytes() for p in polys)


def _mask(context: ThresholdContext, polys: Sequence[Poly], group: bytes, upload: UploadRound, member: int,
          sign: int, purpose: bytes = b"") -> list[Poly]:
    limbs = polys[0].shape[0]
    q = context.ring.q(limbs)
    pads = masks(context, group, upload, member, len(polys), limbs, purpose)
    return [(p + sign * r) % q for p, r in zip(polys, pads, strict=True)]


# -- a public-key sum (a Gram-defended job's accepted uploads, ``crypto.threshold_gram``) ---------------------
def masked_sum_share(context: ThresholdContext, key: KeyShare, group: bytes, total: bytes, vector_size: int,
                     upload: UploadRound, decryptors: Sequence[int]) -> bytes:
    """``d_j + r_j`` per chunk of a public-key sum ``total`` at its level (every data prime: it is not seeded, so
    there is no ``a_r`` to rebuild and no single-prime download), masked for the relay; ``upload`` labels the
    masks (its round attempt), one share per ``c1`` as ``KeyShare.decryption_share`` enforces."""
    cts = context.parse_sum(total, vector_size)
    share = key.decryption_share(cts, decryptors)
    _, _, _, polys = share_polys(context.ring, share, len(cts), context.ring.read_ciphertext(cts[0])[1].shape[0])
    return _pack(key.index, _mask(context, polys, group, upload, key.index, 1, _SUM_PURPOSE))


def combine_sum(context: ThresholdContext, total: bytes, vector_size: int, shares: Mapping[int, bytes]) -> bytes:
    """The relay's download of a public-key sum, key-less: ``c0`` plus every masked share, framed as a sum whose
    ``c1`` is zero (not compressed: the Gram chain's sums span three primes).  Only members can read it."""
    cts = context.parse_sum(total, vector_size)
    ring, parms = context.ring, list(cts[0].parms_id())
    limbs = ring.read_ciphertext(cts[0])[0].shape[0]
    out = [ring.read_ciphertext(ct)[0] for ct in cts]
    for member, blob in sorted(shares.items()):
        out = [c + p for c, p in zip(out, parse_share(context, blob, member, len(cts), limbs), strict=True)]
    q, zero = ring.q(limbs), np.zeros((limbs, ring.n), dtype=object)
    blobs = [_saved(ring.ciphertext(c % q, zero, parms, ct.scale).save) for c, ct in zip(out, cts, strict=True)]
    return context.frame(context.key_id, vector_size, blobs)


def open_combined_sum(context: ThresholdContext, data: bytes, vector_size: int, group: bytes, upload: UploadRound,
                      decryptors: Sequence[int]) -> tuple[np.ndarray, float]:
    """(vector, weight) of :func:`combine_sum`'s download: its masks removed, decoded, the weight slot checked."""
    cts = context.parse_sum(data, vector_size)
    ring = context.ring
    mask = [ring.read_ciphertext(ct)[0] for ct in cts]
    for member in sorted(set(decryptors)):
        mask = _mask(context, mask, group, upload, member, -1, _SUM_PURPOSE)
    plains = [ring.plaintext(m, list(ct.parms_id()), ct.scale) for m, ct in zip(mask, cts, strict=True)]
    return context.checked(context.decode(plains), vector_size)


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
