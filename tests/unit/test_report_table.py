"""The round table and the report: how many updates each round folded in, and accuracy not above the majority
class flagged in the report, the table, the summary and one warning line; report files written or refused with
one ``FileError`` line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedprompt.app.report import (
    BELOW_MAJORITY_MARK,
    COMMAND,
    build_report,
    majority_warning,
    round_table,
    summary,
    write_json,
    write_report_text,
)
from fedprompt.errors import FileError
from fedprompt.protocol import JobView, RoundView


def view(accuracies: list[float], reported: list[int], rejected: tuple[str, ...] = ()) -> JobView:
    rounds = tuple(RoundView(round=k + 1, state="done", attempt=0, selected=("a", "b"), reported=("a", "b")[:n],
                             opened_at=0.0, closed_at=1.0, bytes_up=10, bytes_down=20,
                             metrics={"accuracy": acc, "loss": 0.5, "updates": float(n)},
                             rejected=rejected if k == 0 else ())
                   for k, (acc, n) in enumerate(zip(accuracies, reported, strict=True)))
    return JobView(job_id="j", name="j", state="done", current_round=len(rounds), total_rounds=len(rounds),
                   global_version=len(rounds), participants=2, aggregator="fedavg", vector_size=4, config_toml="",
                   initial_metrics={"accuracy": 0.5, "loss": 0.7}, rounds=rounds)


def report(accuracies: list[float], majority: float = 0.6, **kwargs: Any) -> dict[str, Any]:
    return build_report(view(accuracies, [2] * len(accuracies), **kwargs), majority, 4, 100, test_examples=1000)


def test_the_table_says_how_many_selected_updates_each_round_aggregated() -> None:
    lines = round_table(build_report(view([0.7, 0.8], [1, 2]), 0.6, 4, 100)).splitlines()
    assert lines[0].split()[3] == "aggregated"
    assert [line.split()[3] for line in lines[2:]] == ["1/2", "2/2"]


def test_updates_a_defence_rejected_are_not_counted_as_aggregated() -> None:
    (row,) = report([0.7], rejected=("b",))["rounds"]
    assert (row["updates"], row["aggregated"], row["selected"]) == (2, 1, 2)


def test_a_final_accuracy_above_the_majority_class_is_not_flagged() -> None:
    above = report([0.55, 0.7])
    assert above["above_majority"] is True and above["test_examples"] == 1000
    assert majority_warning(above) is None
    assert BELOW_MAJORITY_MARK not in summary(above)
    table = round_table(above).splitlines()
    assert table[2].split()[1:3] == ["0.5500", BELOW_MAJORITY_MARK]  # round 1 was not above it
    assert table[3].split()[1:3] == ["0.7000", "0.5000"]
    assert table[-1] == f"{BELOW_MAJORITY_MARK} accuracy not above the majority class (0.6000)"


def test_a_final_accuracy_at_or_below_the_majority_class_is_flagged_everywhere() -> None:
    for accuracy in (0.55, 0.6):
        below = report([accuracy])
        assert below["above_majority"] is False
        assert f"final {accuracy:.4f} {BELOW_MAJORITY_MARK} on 1,000 test examples" in summary(below)
        warning = majority_warning(below)
        assert warning is not None
        assert warning.startswith(f"warning: final accuracy {accuracy:.2f} is not above the majority class 0.60: ")
        assert "task.label_words" in warning and "train.lr" in warning and "train.max_steps" in warning and "README" in warning


def test_a_table_with_no_round_below_the_majority_class_has_no_footnote() -> None:
    assert BELOW_MAJORITY_MARK not in round_table(report([0.7, 0.8]))


def test_write_json_returns_what_it_wrote_with_provenance(tmp_path: Path) -> None:
    path = tmp_path / "out" / "r.json"
    token = COMMAND.set("fedprompt bench x")
    try:
        data = write_json({"rows": [(1, 2)]}, path)
    finally:
        COMMAND.reset(token)
    assert json.loads(path.read_text(encoding="utf-8")) == data
    assert data["rows"] == [[1, 2]] and data["provenance"]["command"] == "fedprompt bench x"


@pytest.mark.parametrize("write", [lambda path: write_json({}, path), lambda path: write_report_text("x", path)])
def test_an_unwritable_report_path_is_one_file_error_naming_it(tmp_path: Path, write: Any) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileError, match=r"^report .*taken: is a directory"):
        write(tmp_path / "taken")
