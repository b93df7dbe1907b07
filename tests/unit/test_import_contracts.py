"""The import contracts in ``.importlinter`` hold, and are live: an import that points up breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

LINT = str(Path(sys.executable).with_name("lint-imports"))


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the tree at ``root``, whose ``fedprompt`` package shadows any installed one."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([LINT, "--config", str(root / ".importlinter"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def _copy_tree(into: Path) -> Path:
    """The package's source folders (``fedprompt/`` links the others in) and the contracts, copied."""
    for name in ("fedprompt", "app", "coordinator", "participant", "crypto"):
        shutil.copytree(REPO / name, into / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".importlinter", into / ".importlinter")
    return into


def test_the_import_contracts_hold() -> None:
    done = _lint(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(("module", "line", "broken"), [
    ("fedprompt/config/job.py", "from fedprompt.coordinator import store", "Layers point down"),  # core -> coordinator
    ("crypto/ckks.py", "from fedprompt import errors", "Layers point down"),  # crypto -> core
    ("coordinator/store.py", "from fedprompt.app import report", "Layers point down"),  # coordinator -> app
    ("participant/keys.py", "from fedprompt.coordinator import keys", "Layers point down"),  # the two sides
    ("coordinator/store.py", "import torch", "The coordinator never loads the ML stack"),  # a coordinator never trains
])
def test_an_import_that_points_up_breaks_a_contract(tmp_path: Path, module: str, line: str, broken: str) -> None:
    root = _copy_tree(tmp_path)
    path = root / module
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}  # noqa\n", encoding="utf-8")
    done = _lint(root)
    assert done.returncode != 0
    assert f"{broken}" in done.stdout and "BROKEN" in done.stdout
