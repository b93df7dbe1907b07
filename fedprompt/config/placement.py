"""The ``device``/``dtype`` settings of whatever runs a backbone (participants, the model service, ``predict``),
checked without torch so a coordinator can validate them; ``fedprompt.models.placement`` resolves them."""

from __future__ import annotations

import re

from fedprompt.config.codec import check

#: Precisions a frozen backbone may load in (``auto``: bfloat16 on a GPU that has it, else float32).
DTYPES = ("auto", "float32", "bfloat16", "float16")
_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]{1,3})?")


def placement_key(prefix: str, name: str) -> str:
    """The setting's name in errors: ``participant.device`` in a config file, ``--device`` (empty prefix) on a
    command line."""
    return f"{prefix}.{name}" if prefix else f"--{name}"


def check_placement(prefix: str, device: str, dtype: str) -> None:
    """``device`` is ``auto | cpu | cuda | cuda:N`` and ``dtype`` one of ``DTYPES``."""
    check(bool(_DEVICE.fullmatch(device)), placement_key(prefix, "device"),
          f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device[:40]!r}")
    check(dtype in DTYPES, placement_key(prefix, "dtype"), f"must be one of {', '.join(repr(d) for d in DTYPES)}, got {dtype[:40]!r}")
