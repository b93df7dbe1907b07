"""One import namespace: the built wheel installs ``fedprompt`` alone, and no code imports the design card's
folders (``coordinator/``, ``participant/``, ``crypto/``, ``app/``) under their bare folder names.  The package
asks for version ranges, so it installs beside other federated-learning stacks, while ``make setup`` installs
the tested versions from ``constraints.txt``."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement

from tests.support import REPO

#: Requirements of ``[project].dependencies`` allowed an exact ``==`` pin, each with the test that shows a range
#: breaks.  None is: every dependency is a range.
EXACT_PINS: dict[str, str] = {}

#: Folders of the source tree that are installed as subpackages of ``fedprompt`` (links in ``fedprompt/``).
SUBPACKAGES = ("coordinator", "participant", "crypto", "app")


def test_the_wheel_installs_only_the_fedprompt_import_name(tmp_path: Path) -> None:
    source = tmp_path / "src"
    for name in ("fedprompt", *SUBPACKAGES):
        shutil.copytree(REPO / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source),
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, cwd=source)
    (wheel,) = (tmp_path / "dist").glob("fedprompt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert top == {"fedprompt"}
    for name in SUBPACKAGES:  # the linked folders travel as real files under the one namespace
        assert f"fedprompt/{name}/__init__.py" in names
    assert "fedprompt/app/cli/__init__.py" in names  # the console script's package
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "fedprompt = fedprompt.app.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def _bare_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                   else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
        found += [f"{path.relative_to(REPO)}: {m}" for m in modules if m.split(".")[0] in SUBPACKAGES]
    return found


def test_no_module_imports_a_folder_by_its_bare_name() -> None:
    """``import coordinator`` would load a second copy of modules that ``fedprompt.coordinator`` already loaded."""
    roots = [REPO / "fedprompt", REPO / "tests", *(REPO / name for name in SUBPACKAGES)]
    offenders = [line for root in roots for path in sorted(root.rglob("*.py")) if "v1" not in path.parts
                 for line in _bare_imports(path)]
    assert offenders == []


def _name(requirement: str) -> str:
    """The requirement's project name, normalised as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0]).lower()


def test_the_package_pins_no_dependency_exactly_without_a_reason() -> None:
    """An ``==`` pin makes fedprompt uninstallable beside any stack that needs another version of that package."""
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    pinned = {_name(r) for r in dependencies if "==" in r or "===" in r}
    assert pinned == set(EXACT_PINS)
    assert {"torch", "grpcio", "protobuf", "onnxruntime", "tenseal", "opacus"} <= {_name(r) for r in dependencies}


def test_make_setup_installs_the_tested_versions_from_the_constraints_file() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    installs = [line for line in makefile.splitlines() if re.search(r"pip install .*(torch==|-e )", line)]
    assert len(installs) == 2 and all("-c constraints.txt" in line for line in installs)
    assert "$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0" in installs[0]
    constraints = {_name(line): line.split("==")[1]
                   for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines()
                   if line and not line.startswith("#")}
    assert constraints["torch"] == "2.13.0"
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group if not r.startswith("fedprompt[")]
    for requirement in map(Requirement, [*project["dependencies"], *extras]):  # each admits its tested version
        assert requirement.specifier.contains(constraints[_name(requirement.name)], prereleases=True), requirement


def test_make_setup_installs_the_ray_extra_so_the_tests_run_the_ray_engine() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    (editable,) = re.findall(r"pip install .*-e '\.\[([a-z,]+)\]'", makefile)
    assert "ray" in editable.split(",")
    extras = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert [_name(r) for r in extras["ray"]] == ["ray"]
