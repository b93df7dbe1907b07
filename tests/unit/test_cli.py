"""The CLI package: every command group module registers its commands (one per group resolves to that module's
function), every argument has help and every command's ``--help`` ends with an example that parses, building the
parser loads no ML stack, and the global flags work wherever they are typed."""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fedprompt.app import cli
from fedprompt.app.cli import build_parser, main
from fedprompt.app.cli.common import commands
from fedprompt.crypto.pki import CertificateAuthority
from fedprompt.errors import ConfigError
from fedprompt.logs import configure
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
    (["completion", "bash"], cli.completion.cmd_completion),
]


@pytest.mark.parametrize(("argv", "fn"), COMMANDS, ids=[" ".join(argv[:2]) for argv, _ in COMMANDS])
def test_each_group_module_registers_its_commands(argv: list[str], fn: Callable[[argparse.Namespace], int]) -> None:
    assert build_parser().parse_args(argv).fn is fn


def test_every_group_module_is_covered() -> None:
    assert {fn.__module__ for _, fn in COMMANDS} == {group.__name__ for group in (*cli.GROUPS, cli.ca)}


def test_every_argument_has_help() -> None:
    missing = [f"{command.prog} {'/'.join(action.option_strings) or action.dest}"
               for command in commands(build_parser()) for action in command._actions
               if not action.help and not isinstance(action, argparse._SubParsersAction)]
    assert missing == []


def test_every_command_help_ends_with_an_example_that_parses() -> None:
    root = build_parser()
    every = commands(root)
    assert len(every) >= 30
    for command in every:
        assert command.epilog and command.epilog.startswith("example:\n  "), command.prog
        program, *argv = shlex.split(command.epilog.partition("example:\n")[2])
        assert program == "fedprompt" and " ".join(argv).startswith(command.prog.removeprefix("fedprompt").strip())
        assert callable(root.parse_args(argv).fn), command.prog
        assert command.format_help().rstrip().endswith(command.epilog.rstrip()), command.prog


def test_help_loads_no_ml_stack() -> None:
    code = ("import sys; from fedprompt.app.cli import build_parser; build_parser().format_help(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'onnxruntime', 'grpc'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _flags(argv: str) -> dict[str, object]:
    args = build_parser().parse_args(argv.split())
    return {key: getattr(args, key) for key in ("log_level", "json_logs", "insecure", "coordinator") if hasattr(args, key)}


@pytest.mark.parametrize("argv", ["--json-logs --log-level debug simulate", "simulate --json-logs --log-level debug",
                                  "--json-logs admin --log-level debug jobs", "admin jobs --json-logs --log-level debug",
                                  "admin ca list --dir ca --json-logs --log-level debug",
                                  "coordinator serve --json-logs --log-level debug"])
def test_logging_flags_work_wherever_they_are_typed(argv: str) -> None:
    flags = _flags(argv)
    assert flags["log_level"] == "debug" and flags["json_logs"] is True


@pytest.mark.parametrize("argv", ["admin --insecure --coordinator h:1 jobs", "admin jobs --insecure --coordinator h:1",
                                  "admin --insecure status job --coordinator h:1",
                                  "--insecure --coordinator h:1 admin jobs", "--coordinator h:1 admin --insecure jobs",
                                  "--coordinator h:1 --insecure coordinator health"])
def test_connection_flags_work_before_the_group_and_on_either_side_of_the_command(argv: str) -> None:
    assert _flags(argv) == {"log_level": "info", "json_logs": False, "insecure": True, "coordinator": "h:1"}


def test_connection_flags_typed_after_the_command_win_over_those_before_it() -> None:
    assert _flags("--coordinator a:1 admin --coordinator b:2 jobs")["coordinator"] == "b:2"
    assert _flags("--coordinator a:1 admin jobs")["coordinator"] == "a:1"


def test_a_command_keeps_its_own_connection_defaults_when_no_flag_is_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEDPROMPT_COORDINATOR", raising=False)
    assert _flags("admin jobs")["coordinator"] == "127.0.0.1:50051"
    assert _flags("participant run")["coordinator"] is None  # the --config file's address comes first


@pytest.mark.parametrize("argv", ["--insecure coordinator serve", "--coordinator h:1 simulate"])
def test_a_connection_flag_before_a_command_that_reaches_no_coordinator_is_refused(
        argv: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv.split())
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1
    assert f"{argv.split()[0]} before the command applies only to commands that reach a coordinator" in lines[0]


def test_a_flag_typed_before_the_command_stands_unless_repeated_after_it() -> None:
    assert _flags("--log-level error admin --coordinator a:1 jobs")["log_level"] == "error"
    assert _flags("--log-level error admin --coordinator a:1 jobs")["coordinator"] == "a:1"
    assert _flags("--log-level error admin --coordinator a:1 jobs --log-level warning --coordinator b:2") == {
        "log_level": "warning", "json_logs": False, "insecure": False, "coordinator": "b:2"}


def test_every_command_takes_the_logging_flags() -> None:
    for command in commands(build_parser()):
        assert {"--log-level", "--json-logs"} <= set(command._option_string_actions), command.prog


@pytest.mark.parametrize("argv", [["--log-level", "verbose", "simulate"], ["admin", "jobs", "--log-level", "verbose"]])
def test_an_unknown_log_level_is_refused_in_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1 and lines[0].startswith("fedprompt: error: ")
    assert "invalid choice: 'verbose'" in lines[0] and "'debug'" in lines[0]


def test_configure_refuses_an_unknown_level() -> None:
    with pytest.raises(ConfigError, match="log level 'verbose'"):
        configure("verbose")


def test_version_prints_the_installed_distribution_version() -> None:
    from importlib.metadata import version

    out = subprocess.run([sys.executable, "-m", "fedprompt", "--version"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == f"fedprompt {version('fedprompt')}"


CLIENTS = ["admin jobs", "coordinator health", "participant run"]


@pytest.mark.parametrize("argv", CLIENTS)
def test_every_client_names_the_coordinator_one_way(argv: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDPROMPT_COORDINATOR", "from-env:7")
    assert build_parser().parse_args([*argv.split(), "--coordinator", "flag:8"]).coordinator == "flag:8"
    assert build_parser().parse_args(argv.split()).coordinator == "from-env:7"
    monkeypatch.delenv("FEDPROMPT_COORDINATOR")
    # participant run leaves the address to its config file when neither the flag nor the variable names it
    assert build_parser().parse_args(argv.split()).coordinator == (None if argv == "participant run" else
                                                                   "127.0.0.1:50051")


def test_no_command_calls_the_coordinator_address_anything_else() -> None:
    for command in commands(build_parser()):
        assert "--target" not in command._option_string_actions, command.prog


def test_every_listing_command_takes_format_json() -> None:
    listings = {"fedprompt admin status", "fedprompt admin jobs", "fedprompt admin participants",
                "fedprompt admin flags", "fedprompt admin audit", "fedprompt admin ca list"}
    taking = {command.prog for command in commands(build_parser()) if "--format" in command._option_string_actions}
    exports = {"fedprompt admin export", "fedprompt participant export"}  # their --format is the file's: prompt|peft
    assert taking == listings | exports
    for command in commands(build_parser()):
        if command.prog in exports:
            assert command._option_string_actions["--format"].choices == ("prompt", "peft")
    for prog in listings:
        argv = [*prog.split()[1:], *(["job"] if prog.endswith(("status", "flags")) else []),
                *(["--dir", "ca"] if prog.endswith("list") else []), "--format", "json"]
        assert build_parser().parse_args(argv).format == "json"


def test_ca_list_has_headers_says_when_empty_and_prints_json(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca")

    def listing(*flags: str) -> str:
        args = build_parser().parse_args(["admin", "ca", "list", "--dir", str(ca.dir), *flags])
        assert args.fn(args) == 0
        return capsys.readouterr().out

    assert listing().startswith("this CA has issued no certificate yet") and json.loads(listing("--format", "json")) == []
    ca.issue("admin:alice", tmp_path / "alice")
    assert listing().splitlines()[0].split() == ["serial", "identity", "not_after", "revoked"]
    [row] = json.loads(listing("--format", "json"))
    assert row["identity"] == "admin:alice" and row["revoked"] is False


def test_a_command_typed_without_its_subcommand_names_them(capsys: pytest.CaptureFixture[str]) -> None:
    groups = [(command, action) for command in commands(build_parser()) for action in command._actions
              if isinstance(action, argparse._SubParsersAction)]
    assert {command.prog for command, _ in groups} == {
        "fedprompt", "fedprompt coordinator", "fedprompt participant", "fedprompt model", "fedprompt admin",
        "fedprompt admin ca", "fedprompt data"}
    for command, action in groups:
        args = build_parser().parse_args(command.prog.split()[1:])
        with pytest.raises(SystemExit) as exit_:
            args.fn(args)
        [line] = capsys.readouterr().err.splitlines()
        assert exit_.value.code == 2 and line.startswith("fedprompt: error: "), line
        assert f"choose a command: {', '.join(action.choices)} (" in line


@pytest.fixture(scope="module")
def completion_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "fedprompt.bash"
    path.write_text(subprocess.run([sys.executable, "-m", "fedprompt", "completion", "bash"], cwd=REPO,
                                   capture_output=True, text=True, check=True).stdout, encoding="utf-8")
    return path


@pytest.mark.parametrize(("typed", "offered"), [
    ("fedprompt ad", "admin"),
    ("fedprompt admin --insecure j", "jobs"),
    ("fedprompt admin jobs --fo", "--format"),
    ("fedprompt admin jobs --format ", "table json"),
    ("fedprompt simulate --log-level ", "debug info warning error"),
    ("fedprompt admin ca ", "-h --help init issue csr sign revoke list --log-level --json-logs"),
    ("fedprompt bench f", "failover federated fewshot"),
    ("fedprompt admin export job --out ", ""),  # a file name: bash's own completion takes over
])
def test_bash_completion_offers_what_the_parser_takes(completion_script: Path, typed: str, offered: str) -> None:
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    words = typed.split() + ([""] if typed.endswith(" ") else [])
    code = (f"source {shlex.quote(str(completion_script))}; COMP_WORDS=({' '.join(map(shlex.quote, words))}); "
            "COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); _fedprompt; echo \"${COMPREPLY[*]}\"")
    out = subprocess.run(["bash", "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr == "" and out.stdout.strip() == offered
