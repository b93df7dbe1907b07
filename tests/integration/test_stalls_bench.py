"""``fedprompt bench stalls`` refuses absurd sizes in one line before starting anything.  Its smoke run (two waves:
a real coordinator process over mTLS, stalled upload streams and idle connections from two identities, a 2 s
upload timeout) runs once, in ``test_bench_smoke.py``, which also checks what its figures say."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedprompt.app.cli import main
from fedprompt.logs import configure


@pytest.mark.parametrize("bad", [["--identities", "0"], ["--waves", "0"]])
def test_bench_stalls_refuses_absurd_sizes_before_running(bad: list[str], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    try:
        assert main(["bench", "stalls", "--stalled", "6", *bad, "--report", str(tmp_path / "no.json")]) == 2
    finally:
        configure("warning")  # main() set the log level of the command line
    assert not (tmp_path / "no.json").exists()
    assert "Traceback" not in capsys.readouterr().err
