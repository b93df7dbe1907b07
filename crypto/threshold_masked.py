"""Masked decryption shares: the relay adds them to a seeded sum without learning it, so a member downloads one
compressed polynomial per chunk instead of the compressed ``c0`` and t full-width shares.

Decryptor ``j`` of a round attempt sends ``d_j + r_j`` per chunk, where ``d_j = a_r lambda_j^T sigma_{U,j} + e_j``
is its flooded share (``crypto.threshold_seeded.round_share``) and ``r_j`` is uniform mod the data prime, drawn
from ChaCha20's keystream (``crypto.rns.chacha_stream``) under a key derived (HMAC-SHA-256) from the members'
group key (``crypto.sealing.group_key``, which the relay never holds), the round attempt's label and ``j``.  In
format 2 the pad is drawn on the coefficients, ``rho_j``, and ``r_j = NTT(rho_j)``: the member adds ``rho_j`` to
its flooding noise before the one transform the noise needs anyway, so the share on the wire is in SEAL's NTT
domain as before.  The relay adds ``c0`` of the sum and every masked share, ``y = c0 + sum_j (d_j + r_j) = Delta m
+ e + sum_j e_j + R``, brings ``y`` to coefficients and compresses it with the same key-less modulus switching as
``c0`` alone (``ThresholdContext.compress``, :attr:`ThresholdParams.download_bits`).  A member lifts the download,
subtracts ``sum_j rho_j`` (``R`` on the coefficients) and decodes, with no transform of its own.

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

import functools
import hashlib
import hmac
import struct
from collections.abc import Mapping, Sequence

import numpy as np

from fedprompt.crypto.ckks import _saved
from fedprompt.crypto.errors import InvalidCiphertext
from fedprompt.crypto.modarith import addmod, submod
from fedprompt.crypto.rns import Poly, chacha_stream
from fedprompt.crypto.threshold import KeyShare, ThresholdContext, share_polys
from fedprompt.crypto.threshold_seeded import UploadRound, reference_polys, round_share

_MASKED = struct.Struct("<5sHI")
_MAGIC = b"FPTM2"  # 2: a seeded sum's pads drawn on the coefficients, added through the share's transform
_DOMAIN = b"fedprompt-share-mask-v3\0"  # v3: as format 2 uses them; v2: ChaCha20 pads; v1: SHAKE-256
_SUM_PURPOSE = b"public-key-sum\0"


def masks(context: ThresholdContext, group: bytes, upload: UploadRound, member: int, chunks: int,
          limbs: int = 1, purpose: bytes = b"") -> list[Poly]:
    """The pads of member ``member`` for each chunk of ``upload`` (a seeded sum's ``rho_j``, on the coefficients; a
    public-key sum's ``r_j``, in the NTT domain): uniform mod each of the first ``limbs`` data primes (one for a
    seeded sum; ``uint64``), keyed by ``group``; ``purpose`` separates a public-key sum's masks
    (:data:`_SUM_PURPOSE`) from a seeded sum's of the same round attempt, so no pad serves two shares."""
    key = hmac.new(group, _DOMAIN + purpose + upload.label + struct.pack("<H", member), hashlib.sha256).digest()
    n = context.ring.n  # every chunk's pad drawn as one sequence (label v3; v2 drew them chunk by chunk)
    pads = context.ring.uniform_residues(limbs, chacha_stream(key), chunks * n, count=chunks)
    return list(pads.reshape(limbs, chunks, n).swapaxes(0, 1))


def masked_share(context: ThresholdContext, key: KeyShare, group: bytes, vector_size: int, upload: UploadRound,
                 uploaders: Sequence[int], decryptors: Sequence[int]) -> bytes:
    """``d_j + r_j`` per chunk: ``key``'s flooded share of the uploaders' sum for the decryptor set, masked for the
    relay (once per member and round attempt, as ``KeyShare.flooded`` enforces).  The pad ``rho_j`` (:func:`masks`)
    is drawn on the coefficients and added to the flooding noise before its transform, ``r_j = NTT(rho_j)``: the
    share's one transform serves both, and whoever unmasks subtracts ``rho_j`` from the coefficients it holds."""
    chunks = context.params.num_ciphertexts(vector_size)
    pads = np.stack(masks(context, group, upload, key.index, chunks))[:, 0].astype(np.int64)
    share = round_share(context, key, reference_polys(context, upload, chunks), upload, uploaders, decryptors, pads)
    _, _, _, polys = share_polys(context.ring, share, chunks, 1)
    return _pack(key.index, polys)


def parse_share(context: ThresholdContext, blob: bytes, member: int, chunks: int, limbs: int = 1) -> list[Poly]:
    """A masked share's polynomials (``uint64``), checked for its member, its size and every residue below its
    prime."""
    if len(blob) >= _MASKED.size and blob[:4] == _MAGIC[:4] and blob[:5] != _MAGIC:
        raise InvalidCiphertext(f"masked decryption share of member {member} is in format {blob[:5]!r}, this "
                                f"fedprompt reads {_MAGIC!r}: the member runs another fedprompt version")
    if len(blob) < _MASKED.size or _MASKED.unpack_from(blob) != (_MAGIC, member, chunks):
        raise InvalidCiphertext(f"not a masked decryption share of member {member} for {chunks} chunks")
    return context.ring.parse_residues(blob, _MASKED.size, chunks, limbs)


def _pack(member: int, polys: Sequence[Poly]) -> bytes:
    return _MASKED.pack(_MAGIC, member, len(polys)) + b"".join(np.asarray(p, dtype=np.uint64).tobytes() for p in polys)


def _mask(context: ThresholdContext, polys: Sequence[Poly], group: bytes, upload: UploadRound, member: int,
          sign: int, purpose: bytes = b"") -> list[Poly]:
    """``polys`` plus (``sign`` 1) or less (-1) member ``member``'s masks, ``uint64``."""
    limbs = polys[0].shape[0]
    q, op = context.ring.q64(limbs), addmod if sign > 0 else submod
    pads = masks(context, group, upload, member, len(polys), limbs, purpose)
    return [op(np.asarray(p, dtype=np.uint64), r, q) for p, r in zip(polys, pads, strict=True)]


def _unmask(context: ThresholdContext, c0s: Sequence[Poly], vector_size: int, group: bytes, upload: UploadRound,
            decryptors: Sequence[int], purpose: bytes = b"") -> tuple[np.ndarray, float]:
    """(vector, weight) of a masked sum from its ``c0``s (``uint64``; its ``c1``s are zero, at the job's first
    level and scale): every decryptor's masks taken off, decoded, the weight slot checked."""
    for member in sorted(set(decryptors)):
        c0s = _mask(context, c0s, group, upload, member, -1, purpose)
    parms_id, scale = list(context.seal_context.first_parms_id()), 2.0**context.params.scale_bits
    return context.checked(context.decode([context.ring.plaintext(c0, parms_id, scale) for c0 in c0s]), vector_size)


def _add_shares(context: ThresholdContext, polys: list[Poly], shares: Mapping[int, bytes]) -> list[Poly]:
    """``polys + sum_j (d_j + r_j)`` per chunk (``uint64``), the masked shares parsed by member index."""
    limbs = polys[0].shape[0]
    q = context.ring.q64(limbs)
    for member, blob in sorted(shares.items()):
        polys = [addmod(c, p, q) for c, p in zip(polys, parse_share(context, blob, member, len(polys), limbs),
                                                  strict=True)]
    return polys


# -- a public-key sum (a Gram-defended job's accepted uploads, ``crypto.threshold_gram``) ---------------------
def masked_sum_share(context: ThresholdContext, key: KeyShare, group: bytes, total: bytes, vector_size: int,
                     upload: UploadRound, decryptors: Sequence[int]) -> bytes:
    """``d_j + r_j`` per chunk of a public-key sum ``total`` at its level (every data prime: it is not seeded, so
    there is no ``a_r`` to rebuild and no single-prime download), masked for the relay; ``upload`` labels the
    masks (its round attempt), one share per ``c1`` as ``KeyShare.decryption_share`` enforces."""
    cts = context.parse_sum(total, vector_size)
    share = key.decryption_share(cts, decryptors)
    _, _, _, polys = share_polys(context.ring, share, len(cts), cts[0].coeff_modulus_size())
    return _pack(key.index, _mask(context, polys, group, upload, key.index, 1, _SUM_PURPOSE))


def combine_sum(context: ThresholdContext, total: bytes, vector_size: int, shares: Mapping[int, bytes]) -> bytes:
    """The relay's download of a public-key sum, key-less: ``c0`` plus every masked share, framed as a sum whose
    ``c1`` is zero (not compressed: the Gram chain's sums span three primes).  Only members can read it."""
    cts = context.parse_sum(total, vector_size)
    ring, parms = context.ring, list(cts[0].parms_id())
    out = _add_shares(context, [ring.read_parts(ct, 1)[0] for ct in cts], shares)
    zero = np.zeros_like(out[0])
    blobs = [_saved(ring.ciphertext(c, zero, parms, ct.scale).save) for c, ct in zip(out, cts, strict=True)]
    return context.frame(context.key_id, vector_size, blobs)


def open_combined_sum(context: ThresholdContext, data: bytes, vector_size: int, group: bytes, upload: UploadRound,
                      decryptors: Sequence[int]) -> tuple[np.ndarray, float]:
    """(vector, weight) of :func:`combine_sum`'s download: its masks removed, decoded, the weight slot checked."""
    c0s = [context.ring.read_parts(ct, 1)[0] for ct in context.parse_sum(data, vector_size)]
    return _unmask(context, c0s, vector_size, group, upload, decryptors, _SUM_PURPOSE)


def combine(context: ThresholdContext, data: bytes, vector_size: int, shares: Mapping[int, bytes]) -> bytes:
    """The relay's download, key-less: the sum's ``c0`` plus every decryptor's masked share (by member index),
    compressed (``ThresholdContext.compress``).  Only members, who can strip the masks, can read it.  In numpy
    from the sum's bytes (``ThresholdContext.read_sum``): no SEAL object, no scratch file."""
    masked = np.stack(_add_shares(context, list(context.read_sum(data, vector_size)[:, 0]), shares))
    return context.compress(context.ring.from_ntt_residues(masked)[:, None], vector_size)


def open_sum(context: ThresholdContext, blob: bytes, vector_size: int, group: bytes, upload: UploadRound,
             decryptors: Sequence[int]) -> tuple[np.ndarray, float]:
    """(vector, weight) of a combined download: lifted, its masks removed, decoded, the weight slot checked.  The
    relay's transform brought each ``r_j = NTT(rho_j)`` back to ``rho_j`` on the coefficients, as the download is,
    so the lifted download less the pads' sum is the plaintext's coefficients, decoded in numpy: no transform,
    nothing through SEAL's files."""
    ring, q = context.ring, np.uint64(context.ring.moduli[0])
    lifted = context.lift(blob, vector_size)[:, 0]
    pads = [np.stack(masks(context, group, upload, member, len(lifted)))[:, 0] for member in sorted(set(decryptors))]
    message = submod(lifted, functools.reduce(lambda total, pad: addmod(total, pad, q), pads), q)
    centred = np.where(message > q // np.uint64(2), message.astype(np.int64) - np.int64(q), message.astype(np.int64))
    return context.checked(ring.decode_coefficients(centred, 2.0**context.params.scale_bits), vector_size)
