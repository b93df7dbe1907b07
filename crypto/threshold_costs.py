"""What threshold CKKS costs for n members and a vector size: seconds, bytes and error of one aggregate.

The crypto-level measurement behind ``fedprompt bench threshold``: every member encrypts an update (seeded,
under its own secret, or under the collective public key) and the coordinator folds the ciphertexts.  Seeded, as
in the round path: ``t`` members make masked decryption shares, the coordinator adds them to the sum and
compresses it for download, and one member unmasks it (``crypto.threshold_masked``).  Public-key sums: the
coordinator compresses the sum, ``t`` members make decryption shares of the expanded download and one member
combines them.  Errors are of that path.  Timings are wall-clock on this machine; the figures are per member unless named otherwise.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedprompt.crypto import threshold_masked, threshold_seeded
from fedprompt.crypto.ckks import EncryptedSum, PublicContext
from fedprompt.crypto.rns import Poly
from fedprompt.crypto.threshold import KeyShare, Member, ThresholdContext, ThresholdParams, crp

FLOAT32_BYTES = 4


@dataclass
class Keyed:
    """A threshold job after key generation, as every party holds it, in one process: the members (each with its
    own secret), their public-key shares, the shares each dealt and the key shares each assembled."""

    params: ThresholdParams
    context: ThresholdContext
    job_seed: bytes
    members: list[Member]
    public_shares: list[Poly]
    dealt: dict[int, dict[int, bytes]]  # dealer -> recipient -> dealt share (sealed for the recipient on the wire)
    keys: dict[int, KeyShare]
    keygen_s: float  # every member's key generation, one after another

    @functools.cached_property
    def coordinator(self) -> ThresholdContext:
        """Key-less, made once per job as the coordinator's relay holds it, to compress sums."""
        return ThresholdContext(self.params, key_id=self.context.key_id)


def keygen(params: ThresholdParams) -> Keyed:
    """Collective key generation for ``params``: CRP, secrets and public-key shares, dealing, key shares."""
    context = ThresholdContext(params)
    ring = context.ring
    start = time.perf_counter()
    job_seed = os.urandom(32)
    a = crp(ring, job_seed)
    parties = [Member(params, ring, i) for i in range(1, params.members + 1)]
    public_shares = [m.public_share(a) for m in parties]
    context.set_public_key(a, public_shares)
    dealt = {m.index: m.deal() for m in parties}
    keys = {j: KeyShare(params, ring, j, {i: dealt[i][j] for i in dealt}) for j in dealt}
    return Keyed(params, context, job_seed, parties, public_shares, dealt, keys, time.perf_counter() - start)


def measure(members: int, vector_size: int, seed: int = 0, threshold: int = 0,
            seeded: bool = True) -> dict[str, float]:
    """One aggregate of ``members`` random updates (weights 1..20) through the whole threshold path."""
    return aggregate(keygen(ThresholdParams(members=members, threshold=threshold, seeded_uploads=seeded)),
                     vector_size, seed)


@dataclass
class Folded:
    """Members' random uploads folded by the coordinator: the running sum, the plain weighted sum and weight it
    must decrypt to, the last upload (for its size) and the seconds spent encrypting (all members) and folding."""

    total: EncryptedSum
    expected: np.ndarray
    weight: float
    upload: bytes
    encrypt_s: float
    fold_s: float


def fold(public: PublicContext, vector_size: int, rng: np.random.Generator,
         encryptors: list[Callable[[np.ndarray, float], bytes]]) -> Folded:
    """Each member's random update (N(0, 0.1), weight 1..20 from ``rng``) encrypted by its ``encryptors`` entry
    and folded key-less into one running sum: the round's upload path, the same draws for either scheme."""
    total, expected, weight = public.new_sum(vector_size), np.zeros(vector_size), 0.0
    upload, encrypt_s, fold_s = b"", 0.0, 0.0
    for encrypt in encryptors:
        update, w = rng.normal(0, 0.1, vector_size), float(rng.integers(1, 21))
        start = time.perf_counter()
        upload = encrypt(update * w, w)
        encrypt_s += time.perf_counter() - start
        start = time.perf_counter()
        total.add(total.parse(upload))
        fold_s += time.perf_counter() - start
        expected, weight = expected + update * w, weight + w
    return Folded(total, expected, weight, upload, encrypt_s, fold_s)


def aggregate(keyed: Keyed, vector_size: int, seed: int = 0, round: int = 0) -> dict[str, float]:
    """One aggregate of every member's random update (weights 1..20, drawn from ``seed``) in upload round
    ``round`` (seeded jobs: once per round and key), encrypted, folded, compressed, t-decrypted and combined."""
    params, context, parties, keys = keyed.params, keyed.context, keyed.members, keyed.keys
    members, seeded = params.members, params.seeded_uploads
    public = PublicContext(context.public_bytes(), params.ckks, context.key_id)
    rng = np.random.default_rng(seed)
    upload_round = threshold_seeded.UploadRound(keyed.job_seed, round)
    uploaders = [m.index for m in parties]
    def seeded_by(member: Member) -> Callable[[np.ndarray, float], bytes]:
        return lambda vector, w: threshold_seeded.encrypt(context, member, vector, w, upload_round)

    folded = fold(public, vector_size, rng, [seeded_by(m) if seeded else context.encrypt for m in parties])
    upload, encrypt_s, fold_s, expected, weight = (folded.upload, folded.encrypt_s, folded.fold_s,
                                                   folded.expected, folded.weight)
    summed = folded.total.to_bytes()
    decryptors = list(range(1, params.t + 1))
    coordinator = keyed.coordinator  # made before the clock starts
    if seeded:  # the round path: masked shares, added and compressed by the coordinator, unmasked by a member
        group = os.urandom(32)
        start = time.perf_counter()
        shares = [threshold_masked.masked_share(context, keys[j], group, vector_size, upload_round, uploaders,
                                                decryptors) for j in decryptors]
        partial_decrypt_s = (time.perf_counter() - start) / len(decryptors)
        start = time.perf_counter()
        download = threshold_masked.combine(coordinator, summed, vector_size, dict(zip(decryptors, shares, strict=True)))
        compress_s, expand_s = time.perf_counter() - start, 0.0
        start = time.perf_counter()
        vector, got_weight = threshold_masked.open_sum(context, download, vector_size, group, upload_round, decryptors)
        combine_s = time.perf_counter() - start
    else:  # public-key sums: the compressed sum, expanded, t plain shares combined
        start = time.perf_counter()
        download = coordinator.compress(summed, vector_size)
        compress_s = time.perf_counter() - start
        start = time.perf_counter()
        expanded = context.expand(download, vector_size)
        expand_s = time.perf_counter() - start
        start = time.perf_counter()
        shares = [context.decryption_share(keys[j], expanded, vector_size, decryptors) for j in decryptors]
        partial_decrypt_s = (time.perf_counter() - start) / len(decryptors)
        start = time.perf_counter()
        vector, got_weight = context.combine(expanded, vector_size, shares)
        combine_s = time.perf_counter() - start
    plain = vector_size * FLOAT32_BYTES
    return {
        "members": members, "threshold": params.t, "seeded": seeded, "vector_size": vector_size,
        "security_bits": params.ckks.security_bits, "smudging_sigma_bits": float(np.log2(params.smudging_sigma)),
        "keygen_s_all_members": keyed.keygen_s, "encrypt_s": encrypt_s / members, "fold_s": fold_s / members,
        "partial_decrypt_s": partial_decrypt_s, "combine_s": combine_s,
        "upload_bytes": len(upload), "upload_x_float32": len(upload) / plain,
        "aggregate_bytes": len(summed), "aggregate_x_float32": len(summed) / plain,
        "compress_s": compress_s, "expand_s": expand_s,
        "download_bytes": len(download), "download_x_float32": len(download) / plain,
        "decryption_share_bytes": len(shares[0]), "public_key_share_bytes": keyed.public_shares[0].size * 8,
        "dealt_share_bytes": len(keyed.dealt[1][1]),
        "max_abs_error_sum": float(np.abs(vector - expected).max()),
        "max_abs_error_mean": float(np.abs(vector / got_weight - expected / weight).max()),
        "error_estimate": params.error_estimate,
    }
