"""``fedprompt completion zsh|fish``: each script is valid for its shell (``zsh -n``, ``fish -n``), names every
command, and offers what the parser takes when asked to complete (fish's own ``complete -C``; zsh's completion
builtins, which exist only inside its completion system, stood in for by functions that print what they are
given).  A shell that is not installed skips its checks, saying so."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedprompt.app.bench import BENCHES
from fedprompt.app.cli import build_parser
from fedprompt.app.cli.common import commands
from tests.support import REPO

SHELLS = ("zsh", "fish")


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("completion")
    out = {}
    for shell in SHELLS:
        out[shell] = folder / f"fedprompt.{shell}"
        out[shell].write_text(subprocess.run([sys.executable, "-m", "fedprompt", "completion", shell], cwd=REPO,
                                             capture_output=True, text=True, check=True).stdout, encoding="utf-8")
    return out


def installed(shell: str) -> str:
    path = shutil.which(shell)
    if path is None:
        pytest.skip(f"{shell} is not installed, so its completion script cannot be checked here")
    return path


@pytest.mark.parametrize("shell", SHELLS)
def test_the_script_is_valid_for_its_shell(scripts: dict[str, Path], shell: str) -> None:
    done = subprocess.run([installed(shell), "-n", str(scripts[shell])], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr


@pytest.mark.parametrize("shell", SHELLS)
def test_the_script_names_every_command_and_option(scripts: dict[str, Path], shell: str) -> None:
    text = scripts[shell].read_text(encoding="utf-8")
    for command in commands(build_parser()):
        assert shlex.quote(command.prog) in text or f"'children|{command.prog}'" in text or \
            f"'offered|{command.prog}'" in text, command.prog
        name = command.prog.split()[-1]
        assert name in text, command.prog
        for option in command._option_string_actions:
            assert option in text, f"{command.prog} {option}"


CASES = [
    ("fedprompt ad", ["admin"]),
    ("fedprompt admin --insecure j", ["jobs"]),
    ("fedprompt --coordinator h:1 admin j", ["jobs"]),
    ("fedprompt admin jobs --format ", ["json", "table"]),
    ("fedprompt completion ", ["--help", "--json-logs", "--log-level", "-h", "bash", "fish", "zsh"]),
    ("fedprompt bench f", sorted(name for name in BENCHES if name.startswith("f"))),  # the registry's names
]


@pytest.mark.parametrize(("typed", "offered"), CASES)
def test_fish_offers_what_the_parser_takes(scripts: dict[str, Path], typed: str, offered: list[str]) -> None:
    code = f"source {shlex.quote(str(scripts['fish']))}; complete -C {shlex.quote(typed)}"
    done = subprocess.run([installed("fish"), "-c", code], capture_output=True, text=True, check=True)
    assert sorted(done.stdout.split()) == offered and done.stderr == ""


def test_fish_completes_a_file_name_after_an_option_that_takes_one(scripts: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "prompt.safetensors").write_bytes(b"")
    code = (f"source {shlex.quote(str(scripts['fish']))}; "
            f"complete -C {shlex.quote(f'fedprompt admin export job --out {tmp_path}/pro')}")
    done = subprocess.run([installed("fish"), "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == [f"{tmp_path}/prompt.safetensors"]


@pytest.mark.parametrize(("typed", "offered"), [*CASES, ("fedprompt admin export job --out ", ["FILES"])])
def test_zsh_offers_what_the_parser_takes(scripts: dict[str, Path], typed: str, offered: list[str]) -> None:
    words = typed.split() + ([""] if typed.endswith(" ") else [])
    prefix = words[-1]
    code = ("compdef() { :; }; compadd() { shift; print -rl -- \"$@\"; }; _files() { print FILES; }; "
            f"source {shlex.quote(str(scripts['zsh']))}; words=({' '.join(map(shlex.quote, words))}); "
            "CURRENT=${#words}; _fedprompt")
    done = subprocess.run([installed("zsh"), "-c", code], capture_output=True, text=True, check=True)
    candidates = done.stdout.split()
    assert done.stderr == "" and sorted(c for c in candidates if c.startswith(prefix) or c == "FILES") == offered
