"""A Gram-defended threshold job's payloads (``docs/he.md``, "The encrypted-Gram defence under threshold keys").

* An **upload** (the job's encoding, ``ckks-threshold-v1``, as every payload of a threshold job): the member's public-key ciphertext of ``weight * delta``
  under the collective key and its attestation over the upload and its round attempt (``crypto.attest``, purpose
  ``gram-upload``), which the coordinator checks and every decryptor verifies: the signature rides with the
  upload, in the named-part container of ``fedprompt.wire.levels``.
* A decryptor's **request** (encoding ``ckks-threshold-gram-request-v1``): the round attempt, its decryptors,
  the attested uploads it recomputes the Gram (or the accepted sum) from, and, in the sum's phase, the accepted
  uploaders' weights.  The stored version is ``fedprompt.wire.threshold``'s, its combined part the accepted
  sum's uncompressed download (``threshold_masked.combine_sum``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from fedprompt.errors import InvalidUpdate
from fedprompt.wire.levels import pack, unpack

REQUEST = "ckks-threshold-gram-request-v1"
GRAM, SUM = "gram", "sum"
_UPLOAD, _ATTESTATION, _META = "upload", "attestation", "meta"


def pack_upload(upload: bytes, attestation: bytes) -> bytes:
    return pack({_UPLOAD: (0, upload), _ATTESTATION: (0, attestation)})


def unpack_upload(data: bytes) -> tuple[bytes, bytes]:
    """(upload, attestation); ``InvalidUpdate`` unless the payload holds exactly both, the upload not empty."""
    parts = unpack(data)
    if set(parts) != {_UPLOAD, _ATTESTATION} or not parts[_UPLOAD][1]:
        raise InvalidUpdate("a Gram-defended threshold upload holds its ciphertext and its attestation (empty when "
                            "unattested), nothing else")
    return parts[_UPLOAD][1], parts[_ATTESTATION][1]


@dataclass(frozen=True)
class GramRequest:
    """What a decryptor of a Gram round attempt makes its share of: ``phase`` ``gram`` (the Gram matrix of
    ``uploads``, in the Gram's order) or ``sum`` (the sum of the ``accepted`` uploads, weights added)."""

    phase: str
    round: int
    attempt: int
    decryptors: tuple[str, ...]
    uploads: tuple[tuple[str, bytes, bytes], ...]
    accepted: dict[str, float] = field(default_factory=dict)


def pack_request(request: GramRequest) -> bytes:
    meta = json.dumps({"phase": request.phase, "round": request.round, "attempt": request.attempt,
                       "decryptors": list(request.decryptors), "uploaders": [u for u, _, _ in request.uploads],
                       "accepted": request.accepted})
    parts = {_META: (0, meta.encode())}
    for k, (_, upload, attestation) in enumerate(request.uploads):
        parts[f"u{k}"], parts[f"a{k}"] = (0, upload), (0, attestation)
    return pack(parts)


def unpack_request(data: bytes) -> GramRequest:
    """The request's parts, checked for shape (``InvalidUpdate`` otherwise); the decryptor checks the rest."""
    parts = unpack(data)
    try:
        meta = json.loads(parts[_META][1])
        phase, round_, attempt = meta["phase"], meta["round"], meta["attempt"]
        decryptors, uploaders, accepted = meta["decryptors"], meta["uploaders"], meta["accepted"]
        uploads = tuple((who, parts[f"u{k}"][1], parts[f"a{k}"][1]) for k, who in enumerate(uploaders))
    except (KeyError, ValueError, TypeError) as exc:
        raise InvalidUpdate("a Gram decryption request needs its meta part and every upload") from exc
    ok = (phase in (GRAM, SUM) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                                       for x in (round_, attempt))
          and all(isinstance(x, list) and x and all(isinstance(m, str) for m in x) for x in (decryptors, uploaders))
          and isinstance(accepted, dict) and all(isinstance(w, (int, float)) and math.isfinite(w)
                                                 for w in accepted.values())
          and len(parts) == 1 + 2 * len(uploaders))
    if not ok:
        raise InvalidUpdate("a Gram decryption request needs a well-formed meta part and one upload per uploader")
    return GramRequest(phase, round_, attempt, tuple(decryptors), uploads,
                       {str(who): float(w) for who, w in accepted.items()})
