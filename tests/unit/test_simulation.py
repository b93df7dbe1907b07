"""``simulate`` drives the real coordinator and participant code in one process."""

from __future__ import annotations

from pathlib import Path

from fedprompt.simulation import simulate
from tests.support import tiny_job, toy_sites


def test_simulation_completes_every_round_with_reports(tiny_encoder_dir: Path) -> None:
    report = simulate(tiny_job(tiny_encoder_dir, rounds=3), toy_sites(3))
    assert report["state"] == "done"
    assert [r["round"] for r in report["rounds"]] == [1, 2, 3]
    assert all(r["metric_reports"] == 3 and r["accuracy"] is not None for r in report["rounds"])
    assert report["zero_shot_accuracy"] is not None and report["exchanged_params"] > 0
    assert all(r["bytes_up"] == 3 * 4 * report["exchanged_params"] for r in report["rounds"])
