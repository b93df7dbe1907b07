"""The robust bench's table arithmetic over seeds: means and sample sds, detection pooled over every round
of every seed, the poisoned updates that got in, and the best defence judged against the no-attack ASR."""

from __future__ import annotations

import statistics
from typing import Any

import pytest

from fedprompt.app.bench.robust import TARGETS, best, row


def _report(accuracy: float, asr: float | None, triggered: int, rounds: list[tuple[list[str], list[str]]]) -> dict[str, Any]:
    return {"final_accuracy": accuracy, "asr": asr, "asr_triggered": triggered, "malicious": ["m1", "m2"],
            "detection": {"rounds": [{"round": k + 1, "rejected": rejected, "malicious": malicious,
                                      "accepted_malicious": sorted(set(malicious) - set(rejected))}
                                     for k, (rejected, malicious) in enumerate(rounds)]}}


def test_a_row_gives_mean_and_sample_sd_over_seeds_and_pools_detection_over_rounds() -> None:
    per_seed = {0: _report(0.70, 0.10, 600, [(["m1", "m2"], ["m1", "m2"]), (["m1"], ["m1", "m2"])]),
                1: _report(0.74, 0.20, 550, [(["m1", "h3"], ["m1", "m2"]), ([], ["m1", "m2"])])}
    out = row("norm_bound", True, per_seed)
    assert out["clean_accuracy_mean"] == pytest.approx(0.72)
    assert out["clean_accuracy_sd"] == pytest.approx(statistics.stdev([0.70, 0.74]))
    assert out["asr_mean"] == pytest.approx(0.15) and out["asr_sd"] == pytest.approx(statistics.stdev([0.1, 0.2]))
    assert out["precision"] == pytest.approx(4 / 5)  # 4 malicious among the 5 rejected, over 4 rounds
    assert out["recall"] == pytest.approx(4 / 8)
    assert out["poisoned_updates_accepted"] == 4
    assert out["triggered_examples"] == 550
    assert [(r["seed"], r["round"], r["accepted_malicious"]) for r in out["rejected_by_round"]] == \
        [(0, 1, []), (0, 2, ["m2"]), (1, 1, ["m2"]), (1, 2, ["m1", "m2"])]


def test_one_seed_has_no_sd_and_a_defence_that_flags_nobody_has_no_precision() -> None:
    out = row("median", False, {3: {"final_accuracy": 0.7, "asr": None, "asr_triggered": 0, "detection": None}})
    assert out["clean_accuracy_sd"] is None and out["asr_mean"] is None
    assert out["precision"] is None and out["recall"] is None and out["poisoned_updates_accepted"] is None


def test_the_best_defence_meets_the_most_targets_judged_against_the_no_attack_run() -> None:
    rows = [row("fedavg", True, {0: _report(0.70, 0.0, 600, [])}),
            row("norm_bound", True, {0: _report(0.715, 0.12, 600, [(["m1", "m2"], ["m1", "m2"])])}),
            row("krum", True, {0: _report(0.60, 0.05, 600, [(["m1", "h1", "h2"], ["m1", "m2"])])})]
    judged = best(rows, no_attack_accuracy=0.72, no_attack_asr=0.08)
    # fedavg is never the best defence, and krum's lower ASR does not beat a defence that meets every target
    assert judged["defence"] == "norm_bound" and judged["meeting_all"] == ["norm_bound"]
    assert judged["asr_ceiling"] == pytest.approx(0.08 + TARGETS["asr_over_no_attack"])
    assert judged["meets"] == {"asr": True, "accuracy_drop": True, "recall": True, "precision": True}
    stricter = best(rows, no_attack_accuracy=0.74, no_attack_asr=0.05)
    assert stricter["meeting_all"] == []
    assert stricter["defence"] == "norm_bound"  # recall and precision met; krum meets ASR and recall, less accurate
    assert stricter["meets"] == {"asr": False, "accuracy_drop": False, "recall": True, "precision": True}
