"""The CLI package: every command group module registers its commands (one per group resolves to that module's
function), each group's ``--help`` example parses, and building the parser loads no ML stack."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Callable

import pytest

from fedprompt.app import cli
from fedprompt.app.cli import build_parser
from tests.support import REPO

COMMANDS: list[tuple[list[str], Callable[[argparse.Namespace], int]]] = [
    (["coordinator", "serve", "--insecure"], cli.coordinator.cmd_coordinator_serve),
    (["coordinator", "backup", "--state-dir", "s", "--out", "o"], cli.coordinator.cmd_coordinator_backup),
    (["coordinator", "health"], cli.coordinator.cmd_coordinator_health),
    (["participant", "run", "--insecure", "--name", "a"], cli.participant.cmd_participant_run),
    (["model", "serve", "--insecure"], cli.model.cmd_model_serve),
    (["model", "export"], cli.model.cmd_model_export),
    (["admin", "--insecure", "status", "job"], cli.admin.cmd_admin),
    (["admin", "ca", "list", "--dir", "ca"], cli.ca.cmd_ca),
    (["predict", "--prompt", "p.safetensors", "text"], cli.predict.cmd_predict),
    (["data", "prepare", "--out", "d"], cli.data.cmd_data_prepare),
    (["simulate"], cli.simulate.cmd_simulate),
    (["demo"], cli.demo.cmd_demo),
    (["bench", "dp"], cli.bench.cmd_bench),
]


@pytest.mark.parametrize(("argv", "fn"), COMMANDS, ids=[" ".join(argv[:2]) for argv, _ in COMMANDS])
def test_each_group_module_registers_its_commands(argv: list[str], fn: Callable[[argparse.Namespace], int]) -> None:
    assert build_parser().parse_args(argv).fn is fn


def test_every_group_module_is_covered() -> None:
    assert {fn.__module__ for _, fn in COMMANDS} == {group.__name__ for group in (*cli.GROUPS, cli.ca)}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next((dict(action.choices) for action in parser._actions
                 if isinstance(action, argparse._SubParsersAction)), {})


def test_each_help_example_parses() -> None:
    root = build_parser()
    groups = _subparsers(root)
    parsers = [*groups.values(), _subparsers(groups["admin"])["ca"]]
    examples = [p.epilog.partition("example:\n")[2].strip() for p in parsers if p.epilog]
    assert len(examples) >= 8
    for example in examples:
        program, *argv = shlex.split(example)
        assert program == "fedprompt" and callable(root.parse_args(argv).fn), example


def test_help_loads_no_ml_stack() -> None:
    code = ("import sys; from fedprompt.app.cli import build_parser; build_parser().format_help(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'onnxruntime', 'grpc'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
