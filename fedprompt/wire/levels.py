"""Prompt levels (PLMM, issue #9): their names, and the container that carries one part per level.

A participant's prompt is the concatenation ``global | expert | personal``.  The **global** level (the
global prompt tokens plus, for encoders, the label head) is aggregated over everyone; the **expert** level
within the participant's cohort, in the spirit of clustered federated learning (Sattler, Müller & Samek,
"Clustered Federated Learning", IEEE TNNLS 2021; Ghosh et al., "An Efficient Framework for Clustered
Federated Learning", NeurIPS 2020); the **personal** level is trained only at its site and never leaves it,
like the personalisation layers of FedPer (Arivazhagan et al., 2019).

Over the wire a levelled update or global version is one payload whose data is a *level container*: one
named part per shared level, each part encoded exactly as a whole prompt is without levels (float32, or a
framed CKKS encryption of ``weight * part`` with its own weight slot), so every encrypted level goes through
the same secure path.  The coordinator stores one container per global version with the global part and one
part per cohort (``expert:<cohort>``), plus the cohort assignment as JSON (``cohorts``).
"""

from __future__ import annotations

import struct

from fedprompt.errors import InvalidUpdate, quoted

GLOBAL = "global"
EXPERT = "expert"
PERSONAL = "personal"
LEVELS = (GLOBAL, EXPERT, PERSONAL)
#: The levels that leave a site, in vector order; the personal level never does.
SHARED = (GLOBAL, EXPERT)
COHORTS_PART = "cohorts"

MAGIC = b"FPLV1"
MAX_PARTS = 4096
MAX_NAME = 128
_HEAD = struct.Struct("<5sH")
_ENTRY = struct.Struct("<HII")


def encoding(base: str) -> str:
    """The payload encoding of a level container whose parts use ``base`` (float32 or CKKS)."""
    return f"levels+{base}"


def expert_key(cohort: str) -> str:
    return f"{EXPERT}:{cohort}"


def pack(parts: dict[str, tuple[int, bytes]]) -> bytes:
    """``{name: (vector_size, data)}`` as one container, in the given order."""
    if len(parts) > MAX_PARTS:
        raise InvalidUpdate(f"a level container holds at most {MAX_PARTS} parts")
    out = [_HEAD.pack(MAGIC, len(parts))]
    for name, (size, data) in parts.items():
        raw = name.encode()
        if not 0 < len(raw) <= MAX_NAME:
            raise InvalidUpdate(f"level part names have 1-{MAX_NAME} bytes, got {len(raw)}")
        out += [_ENTRY.pack(len(raw), size, len(data)), raw, data]
    return b"".join(out)


def unpack(data: bytes) -> dict[str, tuple[int, bytes]]:
    """The parts of a container; ``InvalidUpdate`` on anything malformed (bad magic, truncation, repeats)."""
    if len(data) < _HEAD.size:
        raise InvalidUpdate(f"level container of {len(data)} bytes is shorter than its header")
    magic, count = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise InvalidUpdate("not a level container (bad magic)")
    if count > MAX_PARTS:
        raise InvalidUpdate(f"level container announces {count} parts, at most {MAX_PARTS}")
    offset = _HEAD.size
    parts: dict[str, tuple[int, bytes]] = {}
    for index in range(count):
        if offset + _ENTRY.size > len(data):
            raise InvalidUpdate(f"level container truncated before part {index}")
        name_len, size, length = _ENTRY.unpack_from(data, offset)
        offset += _ENTRY.size
        if not 0 < name_len <= MAX_NAME or offset + name_len + length > len(data):
            raise InvalidUpdate(f"level container part {index} is truncated or badly named")
        try:
            name = data[offset : offset + name_len].decode()
        except UnicodeDecodeError as exc:
            raise InvalidUpdate(f"level container part {index} has a name that is not UTF-8") from exc
        offset += name_len
        if name in parts:
            raise InvalidUpdate(f"level container repeats part {quoted(name)}")
        parts[name] = (size, data[offset : offset + length])
        offset += length
    if offset != len(data):
        raise InvalidUpdate(f"{len(data) - offset} unexpected bytes after the last level part")
    return parts


def shared_levels(expert_tokens: int) -> tuple[str, ...]:
    """The levels a job's participants exchange, in vector order."""
    return SHARED if expert_tokens else (GLOBAL,)


def shared_parts(data: bytes, names: tuple[str, ...], sizes: dict[str, int] | None = None,
                 ) -> dict[str, tuple[int, bytes]]:
    """The parts of an update or a member's view: exactly ``names`` in order, of ``sizes`` if known."""
    parts = unpack(data)
    expected = list(names)
    if list(parts) != expected:
        raise InvalidUpdate(f"level container has parts {[quoted(n) for n in list(parts)[:4]]}, expected {expected}")
    for name, (size, _) in parts.items():
        if sizes is not None and size != sizes[name]:
            raise InvalidUpdate(f"level {quoted(name)} has {size} parameters, this job's has {sizes[name]}")
    return parts
