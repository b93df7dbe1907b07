"""A threshold job's global version as stored and downloaded (encoding ``ckks-threshold-v1``).

Everything a member needs to decode the round's aggregate itself, and nothing the coordinator could open: the
round, attempt, uploaders, decryptors and the uploaders' declared example count (for the weight-slot check),
and the combined download (``crypto.threshold_masked``: the sum's ``c0`` plus the decryptors' masked shares,
compressed; one small polynomial per chunk, masked under the members' group key).  A decryptor's request is the
same without the combined part: a share needs the round attempt's seeds, not the sum.  The parts ride in the
named-part container of ``fedprompt.wire.levels``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from fedprompt.errors import InvalidUpdate
from fedprompt.wire.levels import pack, unpack

ENCODING = "ckks-threshold-v1"
_META, _COMBINED = "meta", "combined"


@dataclass(frozen=True)
class ThresholdVersion:
    """One round attempt decrypted by its members: who uploaded and decrypted, and the combined download (empty
    in a decryptor's request)."""

    round: int
    attempt: int
    uploaders: tuple[str, ...]
    decryptors: tuple[str, ...]
    declared_weight: float
    combined: bytes = b""


def pack_version(version: ThresholdVersion) -> bytes:
    meta = json.dumps({"round": version.round, "attempt": version.attempt, "uploaders": list(version.uploaders),
                       "decryptors": list(version.decryptors), "declared_weight": version.declared_weight})
    parts = {_META: (0, meta.encode())}
    if version.combined:
        parts[_COMBINED] = (0, version.combined)
    return pack(parts)


def unpack_version(data: bytes, request: bool = False) -> ThresholdVersion:
    """The version's parts, checked for shape; ``InvalidUpdate`` on anything else (the combined download's contents
    are checked by the member that opens it).  ``request``: a decryptor's request, without the combined part."""
    parts = unpack(data)
    try:
        meta = json.loads(parts[_META][1])
        fields = (meta["round"], meta["attempt"], meta["uploaders"], meta["decryptors"], meta["declared_weight"])
    except (KeyError, ValueError, TypeError) as exc:
        raise InvalidUpdate("a threshold version needs its meta part") from exc
    round_, attempt, uploaders, decryptors, weight = fields
    ok = (all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in (round_, attempt))
          and all(isinstance(x, list) and x and all(isinstance(m, str) for m in x) for x in (uploaders, decryptors))
          and isinstance(weight, (int, float)) and math.isfinite(weight))
    expected = {_META} if request else {_META, _COMBINED}
    if not ok or set(parts) != expected:
        raise InvalidUpdate(f"a threshold {'request' if request else 'version'} needs a well-formed meta part"
                            f"{'' if request else ' and its combined download'} and nothing else")
    combined = b"" if request else parts[_COMBINED][1]
    return ThresholdVersion(round_, attempt, tuple(uploaders), tuple(decryptors), float(weight), combined)
