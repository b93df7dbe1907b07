"""A job's rounds as they finish, for ``demo`` and ``simulate``: a progress bar on stderr, one line a round on
stdout (round, accuracy, updates folded in of those selected, epsilon), and each round's row handed to the
experiment trackers (``fedprompt.app.tracking``), so a long run shows its curve while it runs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedprompt.app.report import fmt, round_rows

if TYPE_CHECKING:
    from tqdm import tqdm

    from fedprompt.app.tracking import Tracking
    from fedprompt.protocol import JobView


def rounds_bar(total: int, show: bool = True) -> tqdm:
    """The progress bar over a job's rounds (on stderr); ``show=False`` (``--no-progress``) makes it silent."""
    from tqdm import tqdm

    return tqdm(total=total, desc="rounds", unit="round", disable=not show)


def round_line(row: dict[str, Any]) -> str:
    """One finished round (a ``report.round_rows`` row) in a line: accuracy (a generation job's exact match and
    ROUGE-L) and loss of its global version,
    updates folded in of the members selected, the record-level epsilon of its contributors (max) and the
    participant-level one where DP is on, bytes and seconds."""
    privacy = ""
    if row.get("record_epsilon_max") is not None:
        privacy += f", epsilon {fmt(row['record_epsilon_max'], 2)}"
    if row.get("participant_epsilon") is not None:
        privacy += f", participant epsilon {fmt(row['participant_epsilon'], 2)}"
    quality = (f"exact_match {fmt(row['exact_match'])}, rouge_l {fmt(row['rouge_l'])}" if "rouge_l" in row
               else f"accuracy {fmt(row['accuracy'])}")
    return (f"round {row['round']}: {quality}, loss {fmt(row['loss'])}, aggregated "
            f"{row['aggregated']}/{row['selected']}{privacy}, up {row['bytes_up']} B, down {row['bytes_down']} B, "
            f"{fmt(row['seconds'], 1)} s")


class RoundFeed:
    """Shows each round once its global version has been evaluated by ``members`` sites (its accuracy is then
    final), and at ``finish`` whatever else finished: one bar step, one ``round_line``, and the row to
    ``tracking``."""

    def __init__(self, total: int, members: int, *, show: bool = True, tracking: Tracking | None = None) -> None:
        self.bar = rounds_bar(total, show)
        self.members = members
        self.tracking = tracking
        self.shown = 0

    def update(self, view: JobView) -> None:
        """Show the rounds of ``view`` whose versions every member has evaluated, in order."""
        done = [r for r in view.rounds if r.state == "done"]
        rows = round_rows(view)
        while self.shown < len(rows) and done[self.shown].metric_reports >= self.members:
            self._show(rows[self.shown])

    def finish(self, rows: list[dict[str, Any]]) -> None:
        """Show the rounds of a finished run (its report's ``rounds``) not shown yet, then close the bar."""
        for row in rows[self.shown:]:
            self._show(row)
        self.close()

    def _show(self, row: dict[str, Any]) -> None:
        self.bar.update(1)
        self.bar.write(round_line(row))
        if self.tracking is not None:
            self.tracking.round(row)
        self.shown += 1

    def close(self) -> None:
        self.bar.close()
