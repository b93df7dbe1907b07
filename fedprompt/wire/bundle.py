"""The check bundle: what a key holder is asked to check in an encrypted round, as one payload.

One named part per encrypted vector, in the job's own encoding (``ckks-v1``, or a level container of them):
the candidate aggregate (``aggregate``), or every update of the attempt masked (``masked:<i>``, see
``fedprompt.crypto.audit``).  The parts ride in the named-part container of ``fedprompt.wire.levels``.
"""

from __future__ import annotations

from fedprompt.errors import InvalidUpdate
from fedprompt.wire.levels import pack, unpack

ENCODING = "check-bundle-v1"
AGGREGATE = "aggregate"
MASKED = "masked"


def pack_bundle(parts: list[tuple[bool, bytes]]) -> bytes:
    """``(masked, data)`` per vector, in order; an unmasked part is the candidate aggregate (one alone).  Each
    part's size field is 0: its vector has the job's sizes, which the key holder knows."""
    if not parts or (len(parts) > 1 and not all(masked for masked, _ in parts)):
        raise InvalidUpdate("a check bundle is one aggregate or one or more masked updates")
    return pack({(f"{MASKED}:{i}" if masked else AGGREGATE): (0, data) for i, (masked, data) in enumerate(parts)})


def unpack_bundle(data: bytes) -> list[tuple[bool, bytes]]:
    """The bundle's ``(masked, data)`` parts in order; ``InvalidUpdate`` on anything else."""
    parts = []
    for index, (name, (_, part)) in enumerate(unpack(data).items()):
        if name == AGGREGATE and index == 0:
            parts.append((False, part))
        elif name == f"{MASKED}:{index}":
            parts.append((True, part))
        else:
            raise InvalidUpdate(f"check bundle part {index} is named {name[:40]!r}")
    if not parts or (len(parts) > 1 and not all(masked for masked, _ in parts)):
        raise InvalidUpdate("a check bundle is one aggregate or one or more masked updates")
    return parts
