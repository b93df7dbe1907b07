"""``progress.RoundFeed``: a round is shown once every member has evaluated its version, in order, once, and
its row goes to the trackers; ``finish`` shows the rest."""

from __future__ import annotations

from typing import Any

import pytest

from fedprompt.app.progress import RoundFeed, round_line
from fedprompt.app.tracking import Tracking
from fedprompt.protocol import JobView, RoundView


def view(*rounds: tuple[str, int]) -> JobView:
    """A job view with rounds given as (state, metric reports)."""
    made = tuple(RoundView(round=k + 1, state=state, attempt=0, selected=("a", "b"), reported=("a", "b"),
                           rejected=(), metrics={"accuracy": 0.5 + k / 10, "loss": 0.7, "updates": 2,
                                                 "record_epsilon_max": 1.5 * (k + 1)},
                           opened_at=0.0, closed_at=1.0, bytes_up=10, bytes_down=20, metric_reports=reports)
                 for k, (state, reports) in enumerate(rounds))
    return JobView(job_id="j", name="j", state="running", current_round=len(rounds), total_rounds=3,
                   global_version=len(rounds), participants=2, aggregator="fedavg", vector_size=4, config_toml="",
                   rounds=made)


class Recorder(Tracking):
    def __init__(self) -> None:
        super().__init__([])
        self.rows: list[dict[str, Any]] = []

    def round(self, row: Any) -> None:
        self.rows.append(dict(row))


def test_a_round_shows_once_every_member_evaluated_it(capsys: pytest.CaptureFixture[str]) -> None:
    recorder = Recorder()
    feed = RoundFeed(3, members=2, show=False, tracking=recorder)
    feed.update(view(("done", 1), ("open", 0)))
    assert capsys.readouterr().out == "" and recorder.rows == []
    feed.update(view(("done", 2), ("done", 1)))
    feed.update(view(("done", 2), ("done", 1)))  # shown once
    out = capsys.readouterr().out.splitlines()
    assert out == ["round 1: accuracy 0.5000, loss 0.7000, aggregated 2/2, epsilon 1.50, up 10 B, down 20 B, 1.0 s"]
    assert [row["round"] for row in recorder.rows] == [1]
    feed.finish([{**recorder.rows[0], "round": r} for r in (1, 2)])
    assert capsys.readouterr().out.startswith("round 2: ") and [row["round"] for row in recorder.rows] == [1, 2]


def test_a_round_line_without_dp_or_accuracy_says_so() -> None:
    row = {"round": 4, "accuracy": None, "loss": 0.25, "aggregated": 1, "selected": 3, "bytes_up": 1,
           "bytes_down": 2, "seconds": 0.04, "record_epsilon_max": None, "participant_epsilon": None}
    assert round_line(row) == "round 4: accuracy -, loss 0.2500, aggregated 1/3, up 1 B, down 2 B, 0.0 s"
