"""`fedprompt demo` itself (real MiniLM, real processes, DP-SGD on as by default), in small settings: the report
has every key and the privacy spent stays within the budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.support import fedprompt_process

pytestmark = pytest.mark.slow


def test_demo_writes_report_and_plot(tmp_path: Path) -> None:
    report, plot = tmp_path / "r.json", tmp_path / "r.png"
    proc = fedprompt_process(["demo", "--rounds", "2", "--steps", "2", "--batch-size", "32", "--test-size", "60",
                              "--report", str(report),
                              "--plot", str(plot), "--workdir", str(tmp_path / "work"),
                              "--track", f"tensorboard:{tmp_path / 'tb'}"], tmp_path / "demo.log")
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
    assert data["dp"] and data["mtls"] and data["he"] == "threshold"
    assert (data["he_t"], data["he_n"]) == (data["he_params"]["threshold"], data["he_params"]["members"])
    assert 0 < data["epsilon"] <= 8.0 + 1e-6 and [r["record_epsilon_max"] > 0 for r in data["rounds"]] == [True, True]
    log = (tmp_path / "demo.log").read_text()
    assert all(f"round {r['round']}: accuracy {r['accuracy']:.4f}" in log for r in data["rounds"])  # as they finished
    [run] = list((tmp_path / "tb").iterdir())  # --track: the rounds, epsilon, report and plot, read back
    events = EventAccumulator(str(run), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    assert [(e.step, round(e.value, 5)) for e in events.Scalars("record_epsilon_max")] == [
        (r["round"], round(r["record_epsilon_max"], 5)) for r in data["rounds"]]
    assert events.Tags()["images"] == [plot.stem] and "r.json/text_summary" in events.Tags()["tensors"]
