"""The ``fedprompt admin`` command line against a real coordinator (plaintext, on 127.0.0.1:0): a name that
several jobs share is refused with their ids, whatever the command, and nothing is done to any of them; the
listings have headers, say so when they are empty, and print JSON with ``--format json``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedprompt.app.admin_client import AdminClient
from fedprompt.app.cli import main
from fedprompt.config import dump_toml
from fedprompt.coordinator.jobs import MAX_CANDIDATES
from fedprompt.errors import PreconditionFailed
from fedprompt.logs import configure
from tests.support import LiveCoordinator, tiny_job


def fedprompt(capfd: pytest.CaptureFixture[str], target: str, *argv: str) -> tuple[int, str, str]:
    """``fedprompt admin --insecure --coordinator TARGET ARGV`` through ``main``: exit code, stdout, stderr (the
    in-process coordinator logs to the same stderr, so only errors are logged during the call)."""
    capfd.readouterr()
    try:
        code = main(["--log-level", "error", "admin", "--insecure", "--coordinator", target, *argv])
        out, err = capfd.readouterr()
    finally:
        with capfd.disabled():
            configure("warning")  # main() pointed logging at the captured stderr
    return code, out, err


@pytest.mark.parametrize("command", [["cancel"], ["start"], ["pause"], ["status"], ["flags"], ["participants"],
                                     ["export", "--out", "never-written.safetensors"]])
def test_a_name_two_jobs_share_is_refused_with_both_ids(tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                                        command: list[str]) -> None:
    job = dump_toml(tiny_job(tmp_path, name="rt-sentiment"))
    with LiveCoordinator(tmp_path / "coord") as coordinator:
        admin = AdminClient(coordinator.target)
        try:
            first, second = admin.create_job(job), admin.create_job(job)
            argv = [command[0], "rt-sentiment", *command[1:]]
            if command[0] == "export":
                argv[-1] = str(tmp_path / argv[-1])
            code, out, err = fedprompt(capfd, coordinator.target, *argv)
            lines = err.strip().splitlines()
            assert code == 2 and out == "" and len(lines) == 1, err
            assert lines[0].startswith("fedprompt: error: FAILED_PRECONDITION: 2 jobs are named 'rt-sentiment'")
            assert f"{second} (created), {first} (created)" in lines[0] and "by its id" in lines[0]
            assert {admin.status(first).state, admin.status(second).state} == {"created"}
            assert not (tmp_path / "never-written.safetensors").exists()
            # by id, each is still reachable
            assert fedprompt(capfd, coordinator.target, "cancel", first)[:2] == (0, "cancelled\n")
            assert admin.status(second).state == "created"
        finally:
            admin.close()


def test_the_refusal_lists_at_most_a_few_candidates(tmp_path: Path) -> None:
    job = dump_toml(tiny_job(tmp_path, name="many"))
    with LiveCoordinator(tmp_path / "coord") as coordinator:
        admin = AdminClient(coordinator.target)
        try:
            ids = [admin.create_job(job) for _ in range(MAX_CANDIDATES + 3)]
            with pytest.raises(PreconditionFailed) as refused:
                admin.cancel("many")
            message = str(refused.value)
            assert f"{len(ids)} jobs are named 'many'" in message and "and 3 more" in message
            assert [i for i in ids if i in message] == ids[3:]  # the newest ten
        finally:
            admin.close()


def test_listings_have_headers_say_when_empty_and_print_json_on_request(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    with LiveCoordinator(tmp_path / "coord") as coordinator:
        target = coordinator.target
        assert fedprompt(capfd, target, "jobs")[1].startswith("no jobs")
        assert json.loads(fedprompt(capfd, target, "jobs", "--format", "json")[1]) == []
        assert fedprompt(capfd, target, "participants")[1].startswith("no participants have joined any job")
        assert json.loads(fedprompt(capfd, target, "participants", "--format", "json")[1]) == []

        code, out, _ = fedprompt(capfd, target, "create", str(write_job(tmp_path)))
        job_id = out.strip()
        code, out, _ = fedprompt(capfd, target, "jobs")
        header, rule, row = out.strip().splitlines()
        assert code == 0 and header.split() == ["job", "name", "state", "round", "participants", "aggregator"]
        assert set(rule) == {"-"} and row.split() == [job_id, "rt-sentiment", "created", "0/2", "0", "fedavg"]
        listed = json.loads(fedprompt(capfd, target, "jobs", "--format", "json")[1])
        assert [(v["job_id"], v["name"], v["state"]) for v in listed] == [(job_id, "rt-sentiment", "created")]
        assert fedprompt(capfd, target, "participants", job_id)[1].startswith(f"no participants have joined job {job_id}")

        status = fedprompt(capfd, target, "status", "rt-sentiment", "--format", "json")[1]
        assert json.loads(status)["job_id"] == job_id
        assert fedprompt(capfd, target, "status", "rt-sentiment", "--json")[1] == status  # the older spelling
        flags = json.loads(fedprompt(capfd, target, "flags", job_id, "--format", "json")[1])
        assert flags["flags"] == [] and flags["quarantined"] == []


def write_job(tmp_path: Path) -> Path:
    """A job file named rt-sentiment, as an admin writes one."""
    path = tmp_path / "job.toml"
    path.write_text(dump_toml(tiny_job(tmp_path, name="rt-sentiment")), encoding="utf-8")
    return path
