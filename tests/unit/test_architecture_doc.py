"""``docs/architecture.md`` is the map of the code: every module has its line in the table of its layer."""

from __future__ import annotations

import re

from tests.support import REPO

#: Each layer's section heading in the document, and the folder whose modules it lists.
SECTIONS = {"### Shared core": "fedprompt", "### Crypto": "crypto", "### Coordinator": "coordinator",
            "### Participant": "participant", "### App layer": "app"}
LINKED = ("app", "coordinator", "participant", "crypto")


def _listed(doc: str, heading: str) -> set[str]:
    """The first-column names of the table under ``heading``."""
    section = doc.split(heading, 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([^`]+)` \|", section, flags=re.M))


def _modules(folder: str) -> set[str]:
    """Module names relative to ``folder`` (``wire/payload``, ``__init__``); the generated stubs as ``v1/``."""
    root = REPO / folder
    names = set()
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        if folder == "fedprompt" and parts[0] in LINKED:
            continue
        names.add("v1/" if parts[0] == "v1" else "/".join(parts))
    return names


def test_every_module_has_its_line_in_the_architecture_map() -> None:
    doc = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    for heading, folder in SECTIONS.items():
        listed, actual = _listed(doc, heading), _modules(folder)
        assert actual - listed == set(), f"{heading}: modules missing from docs/architecture.md"
        assert listed - actual == set(), f"{heading}: docs/architecture.md lists modules that do not exist"


def test_the_map_names_the_real_folders() -> None:
    assert all((REPO / folder).is_dir() for folder in SECTIONS.values())
    assert all((REPO / "fedprompt" / name).is_symlink() for name in LINKED)


def test_every_test_the_security_table_cites_exists() -> None:
    """``docs/security.md`` proves each hostile-input class by naming its test: a renamed or deleted test must
    not leave the table citing nothing (``::name`` cells continue the file named before them)."""
    doc = (REPO / "docs" / "security.md").read_text(encoding="utf-8")
    cited, missing, current = 0, [], ""
    for path, name, continued in re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`|`::(\w+)`", doc):
        current = path or current
        assert (REPO / current).is_file(), current
        test = name or continued
        if test:
            cited += 1
            if not re.search(rf"^(async )?def {test}\(", (REPO / current).read_text(encoding="utf-8"), re.M):
                missing.append(f"{current}::{test}")
    assert cited >= 20 and missing == []
