"""Which method ``bench peft`` tunes at epsilon 8 (the best plain row unless ``--dp-method`` names one), where its
Markdown tables go, and that the README's bench peft table quotes the run's committed report (``docs/results/``),
not figures typed by hand: the Markdown beside each committed report is what ``markdown`` makes of its JSON, and
each of its table rows stands in the README as is."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from fedprompt.app.bench.peft import dp_method_for, markdown, markdown_path
from tests.support import REPO

RESULTS = REPO / "docs" / "results"


def args(dp_method: str | None = None, skip_dp: bool = False) -> argparse.Namespace:
    return argparse.Namespace(dp_method=dp_method, skip_dp=skip_dp)


def test_the_dp_row_tunes_the_best_plain_method_by_default() -> None:
    assert dp_method_for(args(), {"method": "lora"}) == "lora"


def test_dp_method_overrides_the_best_plain_method_and_runs_without_classification_rows() -> None:
    assert dp_method_for(args("prompt"), {"method": "lora"}) == "prompt"
    assert dp_method_for(args("prefix"), None) == "prefix"


def test_no_dp_row_with_skip_dp_or_without_a_method() -> None:
    assert dp_method_for(args("prompt", skip_dp=True), {"method": "lora"}) is None
    assert dp_method_for(args(), None) is None


def test_the_markdown_goes_beside_the_report_and_never_over_it() -> None:
    assert markdown_path("reports/bench-peft.json") == Path("reports/bench-peft.md")
    assert markdown_path("peft.md") == Path("peft.md.md")


COMMITTED = sorted(RESULTS.glob("bench-peft*.json"))


def test_the_one_run_is_committed() -> None:
    assert RESULTS / "bench-peft.json" in COMMITTED


@pytest.mark.parametrize("path", COMMITTED, ids=lambda path: path.name)
def test_the_committed_markdown_is_the_committed_reports(path: Path) -> None:
    report = json.loads(path.read_text(encoding="utf-8"))
    assert markdown_path(str(path)).read_text(encoding="utf-8") == markdown(report)


@pytest.mark.parametrize("path", COMMITTED, ids=lambda path: path.name)
def test_the_readme_quotes_every_row_of_the_committed_run(path: Path) -> None:
    rows = [line for line in markdown_path(str(path)).read_text(encoding="utf-8").splitlines()
            if line.startswith(("| smollm2 |", "| minilm |"))]
    readme = set((REPO / "README.md").read_text(encoding="utf-8").splitlines())
    assert rows and [row for row in rows if row not in readme] == []
