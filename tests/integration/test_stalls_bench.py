"""``fedprompt bench stalls`` end to end at a small size: a real coordinator process over mTLS, stalled upload
streams and idle connections from two identities, two waves with a 2 s upload timeout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedprompt.app.bench import stalls
from fedprompt.app.cli import main
from fedprompt.logs import configure

pytestmark = pytest.mark.slow

#: The keys the report promises (the issue's, then the bench's own).
KEYS = ["stalled_streams", "idle_connections", "identities", "waves", "rss_mb_before", "rss_mb_peak", "rss_mb_after",
        "rss_kib_per_connection", "status_p50_s", "status_p95_s", "status_max_s", "status_calls", "round_completed",
        "round_completed_while_stalled", "streams_closed_by_timeout", "streams_refused", "close_after_s_min",
        "close_after_s_max", "slots_freed", "connections_peak", "connections_after", "per_wave", "errors", "settings"]


def test_bench_stalls_small(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stalls, "TIMEOUT_S", 2.0)
    report = tmp_path / "stalls.json"
    try:
        assert main(["bench", "stalls", "--stalled", "6", "--identities", "2", "--idle", "4",
                     "--report", str(report)]) == 0
        for bad in (["--identities", "0"], ["--waves", "0"]):
            assert main(["bench", "stalls", "--stalled", "6", *bad, "--report", str(tmp_path / "no.json")]) == 2
    finally:
        configure("warning")  # main() set the log level of the command line
    assert not (tmp_path / "no.json").exists()
    out = json.loads(report.read_text())
    assert list(out) == KEYS
    assert (out["stalled_streams"], out["idle_connections"], out["identities"], out["waves"]) == (6, 4, 2, 2)
    assert out["errors"] == 0, out["settings"]["error_messages"]
    assert out["round_completed"] and out["round_completed_while_stalled"] and out["slots_freed"]
    assert (out["streams_closed_by_timeout"], out["streams_refused"], out["connections_after"]) == (12, 0, 0)
    assert out["close_after_s_min"] >= 2.0 and out["connections_peak"] >= 6 + 4
    assert 0 < out["rss_mb_before"] <= out["rss_mb_peak"] and out["status_calls"] > 0
    assert [w["streams_closed_by_timeout"] for w in out["per_wave"]] == [6, 6]
    assert out["settings"]["max_concurrent_uploads"] == 3 and out["settings"]["connection_idle_s"] == 4.0
