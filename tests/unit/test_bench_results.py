"""The README's bench peft table quotes the run's committed report (``docs/results/``), not figures typed by hand:
the Markdown there is what ``bench peft`` makes of the JSON beside it, and each of its table rows stands in the
README as is."""

from __future__ import annotations

import json
from pathlib import Path

from fedprompt.app.bench.peft import markdown

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"


def test_the_committed_markdown_is_the_committed_reports() -> None:
    report = json.loads((RESULTS / "bench-peft.json").read_text(encoding="utf-8"))
    assert (RESULTS / "bench-peft.md").read_text(encoding="utf-8") == markdown(report)


def test_the_readme_quotes_every_row_of_the_committed_run() -> None:
    rows = [line for line in (RESULTS / "bench-peft.md").read_text(encoding="utf-8").splitlines()
            if line.startswith(("| smollm2 |", "| minilm |"))]
    readme = set((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert rows and [row for row in rows if row not in readme] == []
