"""``fedprompt bench peft --resume`` goes on with a run stopped midway (on 2 CPU cores the full run outlasts a
working session): the rows of the report are kept as measured, each naming the run that measured it, only the
missing ones are measured, and a report of other settings, or a complete one, is refused in one line."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from fedprompt.app.cli import main

SMOKE = ["bench", "peft", "--smoke", "--backbones", "minilm", "--methods", "prompt,prefix", "--skip-dp"]


def bench(report: Path, *extra: str) -> int:
    return main([*SMOKE, *extra, "--report", str(report)])


def test_resume_keeps_the_measured_rows_and_measures_only_the_missing_ones(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "peft.json"
    assert bench(report) == 0
    whole = json.loads(report.read_text(encoding="utf-8"))
    assert whole["complete"] and [r["method"] for r in whole["rows"]] == ["prompt", "prefix"]
    assert bench(report, "--resume") == 2  # complete: nothing to go on with
    assert "is complete" in capsys.readouterr().err
    # the run as it stood after its first row (what a stopped run leaves on disk)
    stopped = {**whole, "rows": whole["rows"][:1], "peft_roundtrip": {"minilm/prompt": whole["peft_roundtrip"]
                                                                     ["minilm/prompt"]}, "complete": False}
    report.write_text(json.dumps(stopped), encoding="utf-8")
    assert bench(report, "--rounds", "2", "--resume") == 2
    assert "other settings (rounds)" in capsys.readouterr().err
    assert json.loads(report.read_text(encoding="utf-8")) == stopped  # a refusal leaves the report as it was
    assert bench(report, "--resume") == 0
    resumed = json.loads(report.read_text(encoding="utf-8"))
    assert resumed["complete"] and [r["method"] for r in resumed["rows"]] == ["prompt", "prefix"]
    assert resumed["rows"][0] == whole["rows"][0]  # kept as measured, by run 0
    assert resumed["rows"][1]["run"] == 1 and len(resumed["runs"]) == 2
    assert resumed["runs"][0] == whole["runs"][0] and {"commit", "date", "machine"} <= set(resumed["runs"][1])
    assert set(resumed["peft_roundtrip"]) == {"minilm/prompt", "minilm/prefix"}
    # the Markdown beside the report: each row names its run, and each run its command and commit
    lines = report.with_suffix(".md").read_text(encoding="utf-8").splitlines()
    rows = [line.split(" | ") for line in lines if line.startswith("| minilm")]
    assert [(r[1], r[-1]) for r in rows] == [("prompt", "0 |"), ("prefix", "1 |")]
    assert [line.split(", commit ")[0] for line in lines[-2:]] == [
        f"- run 0: `{shlex.join(['fedprompt', *SMOKE, '--report', str(report)])}`",
        f"- run 1: `{shlex.join(['fedprompt', *SMOKE, '--resume', '--report', str(report)])}`"]
    assert "Traceback" not in capsys.readouterr().err
