"""The round plot: accuracy and loss always, and a privacy panel exactly when the rounds report epsilon."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import pytest

from fedprompt.app.report import plot_rounds


def rounds_report(epsilons: list[float | None]) -> dict[str, object]:
    return {"zero_shot_accuracy": 0.6, "zero_shot_loss": 0.7, "majority_accuracy": 0.55,
            "rounds": [{"round": k + 1, "accuracy": 0.6 + 0.01 * k, "loss": 0.6 - 0.01 * k, "record_epsilon_max": e,
                        "participant_epsilon": None} for k, e in enumerate(epsilons)]}


@pytest.mark.parametrize(("epsilons", "panels"), [([5.4, 6.3, 7.0], 3), ([None, None, None], 2)])
def test_plot_has_a_privacy_panel_only_with_dp(tmp_path: Path, epsilons: list[float | None], panels: int) -> None:
    path = tmp_path / "rounds.png"
    plot_rounds(rounds_report(epsilons), path, "demo")
    width = matplotlib.image.imread(path).shape[1]
    assert width == 5 * panels * 110  # 5 inches a panel at 110 dpi
