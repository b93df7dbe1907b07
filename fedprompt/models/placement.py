"""Where a frozen backbone runs and in which precision: ``device`` and ``dtype`` settings resolved to torch's.

``auto`` picks the first CUDA GPU when torch sees one, else the CPU; in ``auto`` precision a GPU that supports
bfloat16 gets it and everything else float32 (float16 only on request: its narrow range overflows in some
models' activations).  Only the frozen PLM takes the low precision: trainable tensors stay float32 and the loss
is computed in float32 (mixed precision as in Micikevicius et al., "Mixed Precision Training", ICLR 2018).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedprompt.config import check_placement, placement_key
from fedprompt.errors import ConfigError


@dataclass(frozen=True)
class Placement:
    """A resolved device and the frozen backbone's dtype."""

    device: torch.device
    dtype: torch.dtype

    @property
    def label(self) -> str:
        """``cuda:0/bfloat16``-style, for logs and reports."""
        return f"{self.device}/{str(self.dtype).removeprefix('torch.')}"


CPU_FLOAT32 = Placement(torch.device("cpu"), torch.float32)


def resolve_placement(device: str = "auto", dtype: str = "auto", prefix: str = "participant") -> Placement:
    """Turn ``device``/``dtype`` settings into torch's (checked by ``fedprompt.config.placement``, named under
    ``prefix``; empty: the ``--device``/``--dtype`` flags); a GPU that is not there is refused by name."""
    check_placement(prefix, device, dtype)
    if device == "auto":
        resolved = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    else:
        resolved = torch.device("cpu")
        if device != "cpu":  # cuda[:N]; the index is read from the text (torch.device keeps only 8 bits of it)
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            index = int(device.partition(":")[2] or 0)
            if index >= count:
                raise ConfigError(f"{placement_key(prefix, 'device')}: {device!r} is not available here "
                                  f"(torch sees {count} CUDA device(s))")
            resolved = torch.device("cuda", index)
    if dtype == "auto":
        gpu_bf16 = resolved.type == "cuda" and torch.cuda.is_bf16_supported()
        return Placement(resolved, torch.bfloat16 if gpu_bf16 else torch.float32)
    return Placement(resolved, getattr(torch, dtype))
