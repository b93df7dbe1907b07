"""The test suite's own layout: no test module imports another (shared helpers live in ``tests/fakes.py``,
``tests/support.py`` and ``tests/faults.py``), and the controllable clock is defined once."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import REPO

TESTS = REPO / "tests"


def _imported(path: Path) -> set[str]:
    """Every module ``path`` imports by absolute name (``from x import y`` counts ``x`` and ``x.y``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_test_module_imports_another() -> None:
    modules = sorted(TESTS.rglob("test_*.py"))
    assert len(modules) > 50  # the walk found the suite
    test_modules = {".".join(p.relative_to(REPO).with_suffix("").parts) for p in modules}
    found = {str(p.relative_to(REPO)): sorted(_imported(p) & test_modules) for p in sorted(TESTS.rglob("*.py"))}
    assert {path: hits for path, hits in found.items() if hits} == {}


def test_the_controllable_clock_is_defined_once() -> None:
    defining = sorted(str(p.relative_to(REPO)) for p in TESTS.rglob("*.py")
                      if any(isinstance(n, ast.ClassDef) and n.name == "Clock"
                             for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))))
    assert defining == ["tests/fakes.py"]
