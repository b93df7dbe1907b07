"""Resume from the store after a crash, idempotent retries, liveness and atomic checkpoints; each store test runs
on a SQLite file and on a PostgreSQL database (``store_location``).

A "crash" here is dropping every in-memory object and opening the same database with a new store and
job manager, exactly what a restarted coordinator process does (the real-process version, with SIGKILL, is
in tests/integration/test_faults.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from fedprompt.config import dump_toml
from fedprompt.coordinator.checkpoint import Checkpointer, atomic_write, read_checkpoint
from fedprompt.coordinator.jobs import JobManager
from fedprompt.coordinator.recovery import resume_jobs
from fedprompt.coordinator.rounds import RoundState
from fedprompt.coordinator.store import RoundRow, Store
from fedprompt.errors import DuplicateUpdate, InvalidUpdate
from fedprompt.protocol import Payload, TaskKind
from fedprompt.wire.payload import FLOAT32, decode_vector
from tests.fakes import SIZE, Clock, plain_update
from tests.support import tiny_job

DELTAS = {"a": (np.full(SIZE, 1.0, np.float32), 10), "b": (np.full(SIZE, 4.0, np.float32), 5),
          "c": (np.arange(SIZE, dtype=np.float32), 5)}


def fresh(location: str, clock: Clock) -> JobManager:
    """What a restarted coordinator process builds: a new store on the same database, every job resumed."""
    jobs = JobManager(Store(location), clock=clock, offline_after_s=60.0)
    resume_jobs(jobs)
    return jobs


@dataclass
class Running:
    """A running job (2 rounds, 2 to 3 per round, 30 s deadline) of a, b and c whose round 1 is open; b evaluated
    version 0.  ``jobs`` is the coordinator that holds it, on the store at ``location``."""

    jobs: JobManager
    job_id: str
    clock: Clock
    location: str


@pytest.fixture
def running(tmp_path: Path, store_location: str) -> Running:
    clock = Clock()
    jobs = JobManager(Store(store_location), clock=clock, offline_after_s=60.0)
    job_id = jobs.create_job(dump_toml(tiny_job(tmp_path, rounds=2, participants_per_round=3, min_participants=2,
                                                round_deadline_s=30.0)))
    job = jobs.job(job_id)
    for name in ("a", "b", "c"):
        job.join(name, 10, 5, SIZE)
    job.submit("a", plain_update(job_id, 0, np.zeros(SIZE, np.float32)))
    job.report_metrics("b", 0, {"accuracy": 0.5}, 5)
    job.start()
    job.tick()
    return Running(jobs, job_id, clock, store_location)


def global_vector(jobs: JobManager, job_id: str, version: int) -> np.ndarray:
    prompt = jobs.store.prompt(job_id, version)
    assert prompt is not None
    encoding, data = prompt
    return decode_vector(Payload(job_id, version, encoding, SIZE, data), SIZE)


def test_round_collecting_at_crash_restarts_cleanly_and_ends_as_uninterrupted(running: Running) -> None:
    jobs, job_id, clock = running.jobs, running.job_id, running.clock
    old = jobs.job(job_id)
    old.submit("a", plain_update(job_id, 1, *DELTAS["a"]))
    old.submit("b", plain_update(job_id, 1, *DELTAS["b"]))
    clock.now += 500  # down long enough that every member would count as offline without the resume grace
    with capture_logs() as logs:
        resumed = fresh(running.location, clock)
    job = resumed.job(job_id)
    restarted = [e for e in logs if e["event"] == "round 1 restarted cleanly: partial sum not recoverable"]
    assert len(restarted) == 1 and restarted[0]["log_level"] == "warning" and restarted[0]["next_attempt"] == 2
    assert job.state.value == "running" and job.vector_size == SIZE and job.roster.initialiser == "a"
    assert sorted(job.roster.members) == ["a", "b", "c"] and job.online() == ["a", "b", "c"]
    assert job.roster.evaluated["b"] == {0} and job.roster.evaluated["a"] == set()
    assert job.open is not None and (job.open.number, job.open.attempt) == (1, 2) and not job.open.reported
    first = [r for r in resumed.store.rounds(job_id) if r.attempt == 1][0]
    assert first.state == RoundState.FAILED.value and first.summary["restarted"] == 1.0
    # the participants resubmit the same updates (training is a pure function of global, site and round)
    for name, (delta, n) in DELTAS.items():
        job.submit(name, plain_update(job_id, 1, delta, n))
    expected = (10 * DELTAS["a"][0] + 5 * DELTAS["b"][0] + 5 * DELTAS["c"][0]) / 20
    np.testing.assert_array_equal(global_vector(resumed, job_id, 1), expected.astype(np.float32))
    assert resumed.store.update_counts(job_id) == {"a": 2, "b": 2, "c": 1}  # bookkeeping keeps the lost attempt


def test_round_completed_just_before_the_crash_is_kept_and_the_next_one_opens(running: Running) -> None:
    jobs, job_id, clock = running.jobs, running.job_id, running.clock
    job = jobs.job(job_id)
    assert job.open is not None
    # the crash hit right after round 1's row and version 1 were stored (one transaction), before round 2 opened
    jobs.store.complete_round(job.open.row(job_id, RoundState.DONE, clock(), {"updates": 3.0}), FLOAT32,
                              np.ones(SIZE, "<f4").tobytes())
    resumed = fresh(running.location, clock).job(job_id)
    assert [(r.round, r.state) for r in resumed.store.rounds(job_id)] == [(1, "done"), (2, "training")]
    assert resumed.open is not None and (resumed.open.number, resumed.open.attempt) == (2, 1)
    np.testing.assert_array_equal(global_vector(fresh(running.location, clock), job_id, 1), np.ones(SIZE, np.float32))


def test_finished_and_paused_jobs_come_back_as_they_were(running: Running, tmp_path: Path) -> None:
    jobs, job_id, clock = running.jobs, running.job_id, running.clock
    job = jobs.job(job_id)
    for round_ in (1, 2):
        job.tick()
        for name in ("a", "b", "c"):
            job.submit(name, plain_update(job_id, round_, np.ones(SIZE, np.float32)))
    other = jobs.job(jobs.create_job(dump_toml(tiny_job(tmp_path, name="other"))))
    other.start()
    other.pause()
    resumed = fresh(running.location, clock)
    assert resumed.job(job_id).state.value == "done" and resumed.job(job_id).latest_version() == 2
    assert resumed.job("other").state.value == "paused" and resumed.job("other").lifecycle.reason == "paused by admin"
    assert resumed.job(job_id).next_task("a").kind is TaskKind.EVALUATE


def test_retry_of_a_counted_update_is_acknowledged_a_different_one_refused(running: Running) -> None:
    jobs, job_id = running.jobs, running.job_id
    job = jobs.job(job_id)
    sent = plain_update(job_id, 1, *DELTAS["a"])
    header = sent.header(1024)
    assert not job.uploads.already_received("a", header)
    job.submit("a", sent)
    assert job.uploads.already_received("a", header)
    other = plain_update(job_id, 1, DELTAS["a"][0] + 1, 10)
    assert not job.uploads.already_received("a", other.header(1024))
    with pytest.raises(DuplicateUpdate):
        job.submit("a", other)
    assert not job.uploads.already_received("b", header)
    job.submit("b", plain_update(job_id, 1, *DELTAS["b"]))
    job.submit("c", plain_update(job_id, 1, *DELTAS["c"]))
    job.tick()
    assert job.open is not None and job.open.number == 2 and job.uploads.already_received("a", header)  # round 1 done: its answer stays OK
    assert job.uploads.already_received("a", plain_update(job_id, 0, np.zeros(SIZE, np.float32)).header(1024))
    assert not job.uploads.already_received("b", plain_update(job_id, 0, np.zeros(SIZE, np.float32)).header(1024))


def test_update_lost_with_a_crashed_attempt_is_taken_again(running: Running) -> None:
    jobs, job_id, clock = running.jobs, running.job_id, running.clock
    sent = plain_update(job_id, 1, *DELTAS["a"])
    jobs.job(job_id).submit("a", sent)
    job = fresh(running.location, clock).job(job_id)
    assert not job.uploads.already_received("a", sent.header(1024))  # the digest is on record, but for attempt 1 only
    job.submit("a", sent)
    assert job.open is not None and list(job.open.reported) == ["a"]


def test_heartbeat_keeps_a_member_online_and_silent_ones_are_skipped(running: Running) -> None:
    jobs, job_id, clock = running.jobs, running.job_id, running.clock
    job = jobs.job(job_id)
    clock.now += 40
    job.heartbeat("a")
    job.heartbeat("b")
    clock.now += 30
    assert job.open is not None and job.online() == ["a", "b"] and clock.now > job.open.deadline
    job.tick()  # round 1 fails (nobody reported); attempt 2 selects among the online only
    assert job.open is not None and job.open.attempt == 2 and job.open.selected == ("a", "b")


def test_checkpoint_is_atomic_and_round_trips(running: Running, tmp_path: Path) -> None:
    jobs, job_id = running.jobs, running.job_id
    checkpoints = Checkpointer(tmp_path / "checkpoints")
    checkpoints.sync(jobs)
    payload, config_toml = read_checkpoint(checkpoints.path(job_id))
    assert payload.round == 0 and payload.encoding == FLOAT32 and config_toml == jobs.job(job_id).config_toml
    job = jobs.job(job_id)
    for name, (delta, n) in DELTAS.items():
        job.submit(name, plain_update(job_id, 1, delta, n))
    checkpoints.sync(jobs)
    payload, _ = read_checkpoint(checkpoints.path(job_id))
    np.testing.assert_array_equal(decode_vector(payload, SIZE), global_vector(jobs, job_id, 1))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [f"{job_id}.safetensors"]
    path = checkpoints.path(job_id)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    atomic_write(path, bytes(raw))
    with pytest.raises(InvalidUpdate, match="SHA-256"):
        read_checkpoint(path)


@pytest.mark.parametrize("store_location", ["sqlite"], indirect=True)  # PostgreSQL: pg_dump (test_store_backends)
def test_online_backup_is_a_consistent_copy(running: Running, tmp_path: Path) -> None:
    jobs, job_id = running.jobs, running.job_id
    (tmp_path / "backup").mkdir()
    jobs.store.backup(tmp_path / "backup" / "copy.sqlite")
    copy = Store(tmp_path / "backup" / "copy.sqlite")
    assert [j.job_id for j in copy.jobs()] == [job_id]
    copied, original = copy.prompt(job_id, 0), jobs.store.prompt(job_id, 0)
    assert copied is not None and original is not None
    assert hashlib.sha256(copied[1]).digest() == hashlib.sha256(original[1]).digest()
    assert dataclasses.astuple(copy.members(job_id)[0]) == dataclasses.astuple(jobs.store.members(job_id)[0])


def fail_attempt(job, clock: Clock) -> None:
    """One attempt of the open round that ends below min_participants (2) at its deadline."""
    job.tick()
    assert job.open is not None
    job.submit(job.open.selected[0], plain_update(job.job_id, job.open.number, *DELTAS[job.open.selected[0]]))
    clock.now += 31
    for name in ("a", "b", "c"):
        job.heartbeat(name)
    job.tick()


def test_a_crash_restart_does_not_count_towards_max_attempts(running: Running) -> None:
    jobs, job_id, clock = running.jobs, running.job_id, running.clock
    job = jobs.job(job_id)
    fail_attempt(job, clock)
    fail_attempt(job, clock)
    assert job.rounds.failures == 2 and job.open is not None and job.open.attempt == 3
    resumed = fresh(running.location, clock).job(job_id)  # crash while attempt 3 collects
    assert resumed.rounds.failures == 2 and resumed.open is not None and resumed.open.attempt == 4
    assert resumed.state.value == "running"
    fail_attempt(resumed, clock)
    assert resumed.state.value == "paused" and "round 1 failed 3 times" in resumed.lifecycle.reason
    rows = [(r.attempt, r.state, r.summary.get("failures"), r.summary.get("restarted"))
            for r in resumed.store.rounds(job_id)]
    assert rows == [(1, "failed", 1.0, None), (2, "failed", 2.0, None), (3, "failed", None, 1.0),
                    (4, "failed", 3.0, None)]


def test_starting_a_paused_job_again_gives_fresh_attempts_with_new_numbers(running: Running) -> None:
    jobs, job_id, clock = running.jobs, running.job_id, running.clock
    job = jobs.job(job_id)
    for _ in range(3):
        fail_attempt(job, clock)
    assert job.state.value == "paused"
    job.start()
    job.tick()
    assert job.open is not None and job.open.attempt == 4 and job.rounds.failures == 0
    rows = [(r.attempt, r.state, r.summary.get("failures")) for r in job.store.rounds(job_id)]
    assert rows == [(1, "failed", 1.0), (2, "failed", 2.0), (3, "failed", 3.0), (4, "training", None)]  # none reused
    resumed = fresh(running.location, clock).job(job_id)  # a crash right after: the count stays fresh, not 3
    assert resumed.rounds.failures == 0 and resumed.open is not None and resumed.open.attempt == 5
    fail_attempt(resumed, clock)
    assert resumed.state.value == "running" and resumed.rounds.failures == 1


def test_a_round_and_its_global_version_are_stored_together_or_not_at_all(store_location: str) -> None:
    """Completing a round writes its closed row and its new global version in one transaction: when the version
    cannot be written (here: it already exists), the round row is rolled back too, so a restart never finds a
    version whose round still looks in flight (nor a closed round without its version)."""
    store = Store(store_location)
    store.add_job("j", "j", "", "running")
    training = RoundRow("j", 1, 1, RoundState.TRAINING.value, ("a", "b"), 1.0, 61.0, 0.0, 0, 0, {})
    store.save_round(training)
    done = dataclasses.replace(training, state=RoundState.DONE.value, closed_at=5.0, summary={"updates": 2.0})
    store.save_prompt("j", 1, "f32", b"\x00" * 8)
    with pytest.raises(store.integrity_error):
        store.complete_round(done, "f32", b"\x01" * 8)
    assert store.rounds("j") == [training] and store.prompt("j", 1) == ("f32", b"\x00" * 8)
    store.complete_round(dataclasses.replace(done, round=2), "f32", b"\x02" * 8)
    assert store.rounds("j")[-1].summary == {"updates": 2.0} and store.latest_version("j") == 2
