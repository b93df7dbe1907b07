"""`fedprompt demo` itself (real MiniLM, real processes, DP-SGD on as by default), in small settings: the report
has every key and the privacy spent stays within the budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import fedprompt_process

pytestmark = pytest.mark.slow


def test_demo_writes_report_and_plot(tmp_path: Path) -> None:
    report, plot = tmp_path / "r.json", tmp_path / "r.png"
    proc = fedprompt_process(["demo", "--rounds", "2", "--steps", "2", "--batch-size", "32", "--test-size", "60",
                              "--report", str(report),
                              "--plot", str(plot), "--workdir", str(tmp_path / "work")], tmp_path / "demo.log")
    assert proc.wait(600) == 0, (tmp_path / "demo.log").read_text()[-3000:]
    data = json.loads(report.read_text())
    for key in ("majority_accuracy", "zero_shot_accuracy", "final_accuracy", "rounds", "exchanged_params",
                "plm_params"):
        assert data[key] is not None, key
    assert [r["round"] for r in data["rounds"]] == [1, 2]
    assert all({"accuracy", "bytes_up", "bytes_down", "seconds"} <= set(r) for r in data["rounds"])
    assert all(r["bytes_down"] > 0 and r["bytes_up"] > 0 for r in data["rounds"])
    assert all(0 < r["aggregated"] <= r["selected"] for r in data["rounds"])
    assert data["test_examples"] > 0 and data["above_majority"] == (data["final_accuracy"] > data["majority_accuracy"])
    assert data["exchanged_params"] / data["plm_params"] <= 0.0005
    assert plot.stat().st_size > 10_000
    assert data["dp"] and data["mtls"] and data["he"]
    assert 0 < data["epsilon"] <= 8.0 + 1e-6 and [r["record_epsilon_max"] > 0 for r in data["rounds"]] == [True, True]
