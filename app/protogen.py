"""Generate the checked-in gRPC stubs in ``fedprompt/v1`` from ``proto/fedprompt/v1/*.proto``.

One function serves ``make proto`` and the test that proves the checked-in stubs are current.
"""

from __future__ import annotations

import sys
from importlib.resources import files
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "proto"


def generate(out_root: Path) -> list[Path]:
    """Compile every schema into ``out_root/fedprompt/v1``; returns the files written."""
    from grpc_tools import protoc

    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "fedprompt" / "v1").glob("*.proto"))
    include = str(files("grpc_tools") / "_proto")
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out_root}",
            f"--grpc_python_out={out_root}", f"--pyi_out={out_root}", *sources]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed; see the messages above")
    return sorted((out_root / "fedprompt" / "v1").glob("*_pb2*.py*"))


if __name__ == "__main__":
    written = generate(REPO)
    sys.stdout.write("".join(f"wrote {p.relative_to(REPO)}\n" for p in written))
