"""A threshold job's global version as stored and downloaded (encoding ``ckks-threshold-v1``).

Everything a member needs to combine the round's aggregate itself, and nothing the coordinator could open:
the compressed aggregate (``c0`` only; members rebuild ``c1`` from the round attempt's seeds), the round,
attempt, uploaders, decryptors and the uploaders' declared example count (for the weight-slot check), and one
decryption share per decryptor, sealed under the members' group key.  The parts ride in the named-part
container of ``fedprompt.wire.levels``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from fedprompt.errors import InvalidUpdate
from fedprompt.wire.levels import pack, unpack

ENCODING = "ckks-threshold-v1"
_META, _AGGREGATE, _SHARE = "meta", "aggregate", "share:"


@dataclass(frozen=True)
class ThresholdVersion:
    """One decrypted-by-members round attempt: its compressed aggregate and the decryptors' sealed shares."""

    round: int
    attempt: int
    uploaders: tuple[str, ...]
    decryptors: tuple[str, ...]
    declared_weight: float
    aggregate: bytes
    shares: tuple[bytes, ...]

    def sealed_shares(self) -> dict[str, bytes]:
        return dict(zip(self.decryptors, self.shares, strict=True))


def pack_version(version: ThresholdVersion) -> bytes:
    meta = json.dumps({"round": version.round, "attempt": version.attempt, "uploaders": list(version.uploaders),
                       "decryptors": list(version.decryptors), "declared_weight": version.declared_weight})
    parts = {_META: (0, meta.encode()), _AGGREGATE: (0, version.aggregate)}
    parts.update({f"{_SHARE}{i}": (0, share) for i, share in enumerate(version.shares)})
    return pack(parts)


def unpack_version(data: bytes, with_shares: bool = True) -> ThresholdVersion:
    """The version's parts, checked for shape; ``InvalidUpdate`` on anything else (the shares' and the
    aggregate's contents are checked by the member that combines them).  ``with_shares`` False: a decryptor's
    request, the same parts without shares."""
    parts = unpack(data)
    try:
        meta = json.loads(parts[_META][1])
        fields = (meta["round"], meta["attempt"], meta["uploaders"], meta["decryptors"], meta["declared_weight"])
        aggregate = parts[_AGGREGATE][1]
    except (KeyError, ValueError, TypeError) as exc:
        raise InvalidUpdate("a threshold version needs its meta and aggregate parts") from exc
    round_, attempt, uploaders, decryptors, weight = fields
    ok = (all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in (round_, attempt))
          and all(isinstance(x, list) and x and all(isinstance(m, str) for m in x) for x in (uploaders, decryptors))
          and isinstance(weight, (int, float)) and math.isfinite(weight))
    if not ok or len(parts) != 2 + len(decryptors) * with_shares:
        raise InvalidUpdate("a threshold version's meta is malformed or its shares do not match its decryptors")
    try:
        shares = tuple(parts[f"{_SHARE}{i}"][1] for i in range(len(decryptors) * with_shares))
    except KeyError as exc:
        raise InvalidUpdate("a threshold version lacks a decryptor's share") from exc
    return ThresholdVersion(round_, attempt, tuple(uploaders), tuple(decryptors), float(weight), aggregate, shares)
