"""``fedprompt bench stalls`` end to end at its smoke size with two waves: a real coordinator process over mTLS,
stalled upload streams and idle connections from two identities, a 2 s upload timeout.  The smoke test
(``test_bench_smoke.py``) runs one wave and checks the report's keys; this one checks what the figures say, and
that the second wave, on a fresh round, finds every slot and connection freed by the first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedprompt.app.cli import main
from fedprompt.logs import configure

pytestmark = pytest.mark.slow


def test_bench_stalls_small(tmp_path: Path) -> None:
    report = tmp_path / "stalls.json"
    try:
        assert main(["bench", "stalls", "--smoke", "--waves", "2", "--report", str(report)]) == 0
        for bad in (["--identities", "0"], ["--waves", "0"]):
            assert main(["bench", "stalls", "--stalled", "6", *bad, "--report", str(tmp_path / "no.json")]) == 2
    finally:
        configure("warning")  # main() set the log level of the command line
    assert not (tmp_path / "no.json").exists()
    out = json.loads(report.read_text())
    assert (out["stalled_streams"], out["idle_connections"], out["identities"], out["waves"]) == (6, 4, 2, 2)
    assert out["errors"] == 0, out["settings"]["error_messages"]
    assert out["round_completed"] and out["round_completed_while_stalled"] and out["slots_freed"]
    assert (out["streams_closed_by_timeout"], out["streams_refused"], out["connections_after"]) == (12, 0, 0)
    assert out["close_after_s_min"] >= 2.0 and out["connections_peak"] >= 6 + 4
    assert 0 < out["rss_mb_before"] <= out["rss_mb_peak"] and out["status_calls"] > 0
    assert [w["streams_closed_by_timeout"] for w in out["per_wave"]] == [6, 6]
    assert out["settings"]["max_concurrent_uploads"] == 3 and out["settings"]["connection_idle_s"] == 4.0
