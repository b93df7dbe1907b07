"""One job's failure stays with that job, and job ids name files safely (issue 28): driven directly, with a
controllable clock, on a real SQLite file whose writes for one job are refused by SQLite itself (a trigger
raising, as a full disk or a damaged page would for that write) and real checkpoint files.

The live, mTLS versions of these checks are in ``tests/component/test_hostile_names.py``."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from fedprompt.config import dump_toml
from fedprompt.coordinator.checkpoint import Checkpointer, read_checkpoint
from fedprompt.coordinator.jobs import JobManager
from fedprompt.coordinator.liveness import LivenessWatch
from fedprompt.coordinator.recovery import resume_jobs
from fedprompt.coordinator.runtime import JobRuntime
from fedprompt.coordinator.store import JobState, Store
from fedprompt.errors import ConfigError, InvalidRequest
from fedprompt.protocol import JOB_ID, checked_job_id
from tests.fakes import SIZE, Clock, plain_update
from tests.support import tiny_job

#: Names no file may be named after: parent references, absolute paths, separators, control characters,
#: a UTF-8 name of 300 bytes (a file name may have 255).
HOSTILE = ["../../escape/dotdot", "/tmp/absolute", "a/b", "a\\b", "..", ".", "tab\there", "nul\x00byte",
           "new\nline", "é" * 150, "-rf", " spaced "]


@dataclass
class Two:
    """Two running jobs of the same manager, each with members a and b (a gave version 0), round 1 open."""

    jobs: JobManager
    clock: Clock
    store: Store
    path: Path
    broken: JobRuntime
    canary: JobRuntime


def running_job(jobs: JobManager, name: str, deadline_s: float) -> JobRuntime:
    job = jobs.job(jobs.create_job(dump_toml(tiny_job(Path("/nonexistent"), name=name, rounds=2,
                                                      participants_per_round=2, min_participants=2,
                                                      round_deadline_s=deadline_s))))
    for member in ("a", "b"):
        job.join(member, 10, 5, SIZE)
    job.submit("a", plain_update(job.job_id, 0, np.zeros(SIZE, np.float32)))
    job.start()
    return job


@pytest.fixture
def two(tmp_path: Path) -> Two:
    clock = Clock()
    path = tmp_path / "coordinator.sqlite"
    store = Store(path)
    jobs = JobManager(store, clock=clock)
    broken, canary = running_job(jobs, "broken", 10.0), running_job(jobs, "canary", 10.0)
    jobs.tick()
    assert broken.open is not None and canary.open is not None
    return Two(jobs, clock, store, path, broken, canary)


def refuse(path: Path, name: str, table: str, job_id: str, event: str = "INSERT") -> None:
    """Make SQLite itself refuse one kind of write for one job (another connection to the same file)."""
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TRIGGER {name} BEFORE {event} ON {table} WHEN NEW.job_id = '{job_id}' "
                   f"BEGIN SELECT RAISE(ABORT, 'disk I/O error (injected for one job)'); END")


def allow(path: Path, name: str) -> None:
    with sqlite3.connect(path) as db:
        db.execute(f"DROP TRIGGER {name}")


#: Names the config accepts that would still make poor file names: long UTF-8, spaces, dots, the longest allowed.
ODD_NAMES = ["é" * 60, "hospital a", "Zürich.study-2", "x" * 128]


def test_job_ids_are_opaque_safe_names_and_jobs_are_still_found_by_name(tmp_path: Path) -> None:
    jobs = JobManager(Store(tmp_path / "coordinator.sqlite"))
    for name in HOSTILE:  # refused at creation, naming the key (the config's name rule)
        with pytest.raises(ConfigError, match="job.name"):
            jobs.create_job(dump_toml(tiny_job(tmp_path, name=name)))
    made = {name: jobs.create_job(dump_toml(tiny_job(tmp_path, name=name))) for name in ODD_NAMES}
    for name, job_id in made.items():
        assert JOB_ID.fullmatch(job_id) and job_id.startswith("job-") and name not in job_id
        assert checked_job_id(job_id, "test") == job_id
        assert jobs.job(name).job_id == job_id and jobs.job(job_id).config.job.name == name
    assert len(set(made.values())) == len(made)


@pytest.mark.parametrize("job_id", HOSTILE + ["", "x" * 129, "job-é", ".hidden", "job id"])
def test_a_job_id_that_is_not_one_safe_file_name_is_refused(job_id: str) -> None:
    with pytest.raises(InvalidRequest, match="is not a safe file name component"):
        checked_job_id(job_id, "test")


def test_a_store_write_refused_for_one_job_pauses_it_and_the_other_jobs_deadline_is_handled(two: Two) -> None:
    jobs, broken, canary = two.jobs, two.broken, two.canary
    refuse(two.path, "refuse_rounds", "rounds", broken.job_id)
    two.clock.advance(11)  # both deadlines pass with nobody reported: each attempt fails and is stored
    with capture_logs() as logs:
        jobs.tick()
        jobs.tick()
    assert broken.state is JobState.PAUSED and "rounds step failed" in broken.lifecycle.reason
    assert "disk I/O error (injected for one job)" in broken.lifecycle.reason
    assert jobs.store.jobs()[0].state == "paused" and jobs.store.jobs()[0].reason == broken.lifecycle.reason
    assert broken.view().state == "paused" and broken.view().reason == broken.lifecycle.reason  # what `admin status` shows
    failed = [e for e in logs if e["event"] == "job step failed"]
    assert len(failed) == 1 and failed[0]["job_id"] == broken.job_id and failed[0]["log_level"] == "error"
    assert failed[0]["step"] == "rounds" and re.search(r"coordinator/store\.py:\d+$", failed[0]["at"])
    # the canary's deadline was handled in the same ticks: attempt 1 failed on record, attempt 2 open
    assert canary.state is JobState.RUNNING
    assert [(r.attempt, r.state) for r in jobs.store.rounds(canary.job_id)] == [(1, "failed"), (2, "training")]
    # an admin starts the job again once the disk is fixed: it goes on
    allow(two.path, "refuse_rounds")
    broken.start()
    jobs.tick()
    assert broken.view().state == "running" and broken.view().rounds[-1].attempt == 2


def test_a_pause_the_store_refuses_is_in_force_and_recorded_at_a_later_tick(two: Two) -> None:
    jobs, broken, canary = two.jobs, two.broken, two.canary
    refuse(two.path, "refuse_rounds", "rounds", broken.job_id)
    refuse(two.path, "refuse_state", "jobs", broken.job_id, "UPDATE OF state")
    two.clock.advance(11)
    with capture_logs() as logs:
        for _ in range(3):
            jobs.tick()
    assert broken.state is JobState.PAUSED and broken.view().reason == broken.lifecycle.reason  # in force, in memory
    assert [j.state for j in jobs.store.jobs()] == ["running", "running"]  # the store still refuses
    assert [e["event"] for e in logs if e.get("job_id") == broken.job_id and e["log_level"] == "error"] == [
        "job step failed", "job pause not recorded: retried at the next tick"]
    assert canary.open is not None and canary.open.attempt == 2  # the others' deadlines go on meanwhile
    allow(two.path, "refuse_state")
    jobs.tick()
    assert [(j.state, j.reason) for j in jobs.store.jobs()][0] == ("paused", broken.lifecycle.reason)


def test_liveness_and_checkpoints_of_the_other_jobs_go_on_when_one_jobs_checkpoint_fails(two: Two,
                                                                                        tmp_path: Path) -> None:
    jobs, broken, canary = two.jobs, two.broken, two.canary
    checkpoints = Checkpointer(tmp_path / "checkpoints")
    checkpoints.path(broken.job_id).mkdir(parents=True)  # a directory where the file goes: the rename fails
    watch = LivenessWatch()
    with capture_logs() as logs:
        checkpoints.sync(jobs)
        watch.sweep(jobs)
        two.clock.advance(200)  # every member falls silent: the watch logs it for both jobs
        watch.sweep(jobs)
        checkpoints.sync(jobs)
    assert broken.state is JobState.PAUSED and broken.lifecycle.reason.startswith("checkpoint step failed: IsADirectoryError")
    assert read_checkpoint(checkpoints.path(canary.job_id))[0].round == 0 and canary.state is JobState.RUNNING
    assert len([e for e in logs if e["event"] == "job step failed"]) == 1
    assert {e["job_id"] for e in logs if e["event"] == "participant offline"} == {broken.job_id, canary.job_id}
    checkpoints.path(broken.job_id).rmdir()
    checkpoints.sync(jobs)  # retried at every sync: written once the disk takes it; the job stays paused
    assert read_checkpoint(checkpoints.path(broken.job_id))[0].round == 0 and broken.state is JobState.PAUSED


def test_a_revocation_expels_the_member_from_every_job_even_when_one_jobs_store_write_fails(two: Two) -> None:
    jobs, broken, canary = two.jobs, two.broken, two.canary
    refuse(two.path, "refuse_members", "members", broken.job_id)
    jobs.expel("b", "certificate revoked")  # reported once by the CRL: every job must act on it now
    assert broken.state is JobState.PAUSED and broken.lifecycle.reason.startswith("expel step failed: IntegrityError")
    assert canary.roster.members["b"].state.value == "revoked" and canary.state is JobState.RUNNING
    assert [m.state.value for m in jobs.store.members(canary.job_id)] == ["active", "revoked"]


def test_a_restart_whose_first_round_fails_for_one_job_pauses_it_and_resumes_the_others(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.sqlite"
    jobs = JobManager(Store(path))
    broken, canary = running_job(jobs, "broken", 10.0), running_job(jobs, "canary", 10.0)  # no round open yet
    jobs.store.close()
    refuse(path, "refuse_rounds", "rounds", broken.job_id)
    resumed = JobManager(Store(path))
    assert sorted(resume_jobs(resumed)) == sorted([broken.job_id, canary.job_id])
    assert resumed.job("broken").state is JobState.PAUSED and "rounds step failed" in resumed.job("broken").lifecycle.reason
    assert resumed.job("canary").open is not None and resumed.job("canary").state is JobState.RUNNING
    resumed.store.close()


def test_a_stored_job_whose_id_is_no_safe_name_is_paused_at_its_checkpoint_after_a_restart(tmp_path: Path) -> None:
    """A store written before job ids were opaque may hold ``<name>-<hex>`` ids made of any name."""
    state = tmp_path / "state"
    store = Store(state / "coordinator.sqlite")
    config = dump_toml(tiny_job(tmp_path, name="x"))
    for job_id in ("../../escape/dotdot-1a2b3c4d", "plain-1a2b3c4d"):
        store.add_job(job_id, "x", config, "running")
        store.save_prompt(job_id, 0, "float32-le", np.zeros(SIZE, "<f4").tobytes())
    store.close()
    jobs = JobManager(Store(state / "coordinator.sqlite"))
    resume_jobs(jobs)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    Checkpointer(state / "checkpoints").sync(jobs)
    hostile, plain = jobs.job("../../escape/dotdot-1a2b3c4d"), jobs.job("plain-1a2b3c4d")
    assert hostile.state is JobState.PAUSED and "is not a safe file name component" in hostile.lifecycle.reason
    assert plain.state is JobState.RUNNING
    after = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert set(after) - set(before) == {"state/checkpoints", "state/checkpoints/plain-1a2b3c4d.safetensors"}
    jobs.store.close()


def test_a_stored_job_that_no_longer_validates_is_left_out_and_the_others_resume(tmp_path: Path) -> None:
    """A store written before today's rules may hold a config they refuse (a name with ``..``, a deadline of
    inf): the coordinator starts, resumes the others, and leaves that job's rows as they were."""
    path = tmp_path / "coordinator.sqlite"
    store = Store(path)
    good = dump_toml(tiny_job(tmp_path, name="good"))
    store.add_job("job-00000000000000aa", "good", good, "running")
    for job_id, bad in (("job-00000000000000bb", good.replace('name = "good"', 'name = "../../escape"')),
                        ("job-00000000000000cc", good + "\n[unknown_section]\nx = 1\n")):
        store.add_job(job_id, "old", bad, "running")
    store.close()
    jobs = JobManager(Store(path))
    with capture_logs() as logs:
        assert resume_jobs(jobs) == ["job-00000000000000aa"]
    assert sorted(jobs.jobs) == ["job-00000000000000aa"]
    refused = [e for e in logs if e["event"] == "job not restored: left as stored"]
    assert [e["job_id"] for e in refused] == ["job-00000000000000bb", "job-00000000000000cc"]
    assert all(e["error"] == "ConfigError" for e in refused)
    assert {r.job_id: r.state for r in jobs.store.jobs()} == {
        "job-00000000000000aa": "running", "job-00000000000000bb": "running", "job-00000000000000cc": "running"}
    jobs.store.close()
