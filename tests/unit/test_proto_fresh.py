"""The checked-in gRPC stubs are exactly what the schemas generate."""

from __future__ import annotations

from pathlib import Path

from fedprompt.app.protogen import REPO, generate


def test_generated_stubs_are_current(tmp_path: Path) -> None:
    written = generate(tmp_path)
    assert written, "no stubs generated"
    checked_in = sorted((REPO / "fedprompt" / "v1").glob("*_pb2*.py*"))
    assert [p.name for p in written] == [p.name for p in checked_in]
    for fresh, current in zip(written, checked_in):
        assert fresh.read_bytes() == current.read_bytes(), f"{current.name} is stale: run `make proto`"
