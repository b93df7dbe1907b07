"""Which method ``bench peft`` tunes at epsilon 8 (the best plain row unless ``--dp-method`` names one), where its
Markdown tables go, and that the README's bench peft table quotes the run's committed report (``docs/results/``),
not figures typed by hand: the Markdown there is what ``markdown`` makes of the JSON beside it, and each of its
table rows stands in the README as is."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

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


def test_the_committed_markdown_is_the_committed_reports() -> None:
    report = json.loads((RESULTS / "bench-peft.json").read_text(encoding="utf-8"))
    assert (RESULTS / "bench-peft.md").read_text(encoding="utf-8") == markdown(report)


def test_the_readme_quotes_every_row_of_the_committed_run() -> None:
    rows = [line for line in (RESULTS / "bench-peft.md").read_text(encoding="utf-8").splitlines()
            if line.startswith(("| smollm2 |", "| minilm |"))]
    readme = set((REPO / "README.md").read_text(encoding="utf-8").splitlines())
    assert rows and [row for row in rows if row not in readme] == []
