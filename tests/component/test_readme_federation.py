"""The README's "Running a federation by hand" block works as pasted: every ``fedprompt`` command in it parses
with the real parser and agrees with the ``--insecure`` coordinator the block starts (the admin lines used to
speak mTLS to it), the sites it runs are on the job's allow-list, and the block's coordinator, health and
admin lines run against a real coordinator."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import pytest

from fedprompt.app.admin_client import AdminClient
from fedprompt.app.cli import build_parser, main
from fedprompt.config import JobConfig, load_toml
from fedprompt.logs import configure
from tests.support import REPO, LiveCoordinator

SECTION = "## Running a federation by hand"


def readme_commands() -> list[list[str]]:
    """Each ``fedprompt`` command of the block, as argv after ``fedprompt``, in order (a shell line may hold
    several: ``until fedprompt ...; do ...``, ``printf ... | fedprompt ...``)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text[text.index(SECTION):].split("```bash\n", 1)[1].split("```", 1)[0]
    found = []
    for line in block.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for token in [*lexer, ";"]:
            if token in {";", "&", "|", "&&", "||"}:
                if command[:1] == ["fedprompt"]:
                    found.append(command[1:])
                command = []
            elif command or token not in {"until", "do", "done", "then"}:
                command.append(token)
    return found


def parsed() -> list[argparse.Namespace]:
    return [build_parser().parse_args(argv) for argv in readme_commands()]


def test_every_command_parses_and_speaks_plaintext_to_the_insecure_coordinator() -> None:
    commands = parsed()
    talking = [args for args in commands if hasattr(args, "insecure")]
    assert len(talking) >= 9 and [args for args in talking if not args.insecure] == []
    assert all(callable(args.fn) for args in commands)
    kinds = [(args.command, getattr(args, "sub", None) or getattr(args, "admin_cmd", None)) for args in commands]
    assert kinds[:3] == [("coordinator", "serve"), ("coordinator", "health"), ("admin", "create")]


def test_the_sites_are_the_jobs_and_read_what_data_prepare_writes() -> None:
    commands = parsed()
    [create] = [args for args in commands if getattr(args, "admin_cmd", None) == "create"]
    job = load_toml(REPO / create.config, JobConfig).job
    [prepare] = [args for args in commands if args.command == "data"]
    sites = [args for args in commands if args.command == "participant"]
    assert len(sites) == prepare.participants >= job.participants_per_round
    assert {args.name for args in sites} <= set(job.allowed_participants)
    assert {args.job for args in sites} == {job.name}
    assert {args.data_dir for args in sites} == {f"{prepare.out}/participant-{k}" for k in range(prepare.participants)}
    [export] = [args for args in commands if getattr(args, "admin_cmd", None) == "export"]
    assert {args.prompt for args in commands if args.command == "predict"} == {export.out}
    assert all(args.job == job.name for args in commands if getattr(args, "admin_cmd", None) in ("status", "export"))


def test_the_health_and_admin_lines_run_against_a_real_insecure_coordinator(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    lines = [argv for argv in readme_commands()
             if argv[:2] == ["coordinator", "health"] or argv[0] == "admin" and argv[1] in ("create", "status",
                                                                                          "participants")]
    assert len(lines) == 4
    monkeypatch.chdir(REPO)  # the block runs from the repository root (examples/job.toml)
    with LiveCoordinator(tmp_path / "coord") as coordinator:
        # the block names no address: the variable points it at this coordinator rather than a fixed port
        monkeypatch.setenv("FEDPROMPT_COORDINATOR", coordinator.target)
        try:
            for argv in lines:
                assert main(["--log-level", "error", *argv]) == 0, argv
            out = capfd.readouterr().out
        finally:
            with capfd.disabled():
                configure("warning")  # main() pointed logging at the captured stderr
        admin = AdminClient(coordinator.target)
        try:
            [job] = admin.jobs()
        finally:
            admin.close()
        assert "SERVING" in out and job.job_id in out and job.name == "rt-sentiment" and job.state == "running"
