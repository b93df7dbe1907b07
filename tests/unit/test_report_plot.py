"""The round plot: accuracy and loss always, a privacy panel exactly when the rounds report epsilon, and an accuracy
axis that starts at or below the majority line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.image
import pytest

from fedprompt.app.report import accuracy_limits, plot_rounds


def rounds_report(epsilons: list[float | None]) -> dict[str, Any]:
    return {"zero_shot_accuracy": 0.6, "zero_shot_loss": 0.7, "majority_accuracy": 0.55,
            "rounds": [{"round": k + 1, "accuracy": 0.6 + 0.01 * k, "loss": 0.6 - 0.01 * k, "record_epsilon_max": e,
                        "participant_epsilon": None} for k, e in enumerate(epsilons)]}


@pytest.mark.parametrize(("epsilons", "panels"), [([5.4, 6.3, 7.0], 3), ([None, None, None], 2)])
def test_plot_has_a_privacy_panel_only_with_dp(tmp_path: Path, epsilons: list[float | None], panels: int) -> None:
    path = tmp_path / "rounds.png"
    plot_rounds(rounds_report(epsilons), path, "demo")
    width = matplotlib.image.imread(path).shape[1]
    assert width == 5 * panels * 110  # 5 inches a panel at 110 dpi


def test_the_accuracy_axis_starts_at_or_below_the_majority_line(tmp_path: Path) -> None:
    report = rounds_report([None, None, None])  # accuracies 0.60-0.62, majority 0.55
    low, high = plot_rounds(report, tmp_path / "rounds.png")
    assert (low, high) == pytest.approx(accuracy_limits(report))
    assert low <= report["majority_accuracy"] and high >= 0.62


def test_the_accuracy_axis_shows_a_curve_under_the_majority_line() -> None:
    report = {**rounds_report([None]), "majority_accuracy": 0.9, "zero_shot_accuracy": None}
    low, high = accuracy_limits(report)
    assert low <= 0.6 and 0.9 <= high <= 1.0


def test_the_accuracy_axis_stays_within_zero_and_one() -> None:
    report = {**rounds_report([None]), "majority_accuracy": 0.01, "zero_shot_accuracy": 0.995}
    assert accuracy_limits(report) == (0.0, 1.0)
