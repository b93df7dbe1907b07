"""Robust rounds on the real state machine and SQLite: decisions stored, quarantine after K, admin release,
refusal of a defence whose assumption fails (round attempt fails, state intact)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fedprompt.config import RobustSection, dump_toml
from fedprompt.coordinator.jobs import JobManager
from fedprompt.coordinator.recovery import rejection_streaks, resume_jobs
from fedprompt.coordinator.runtime import JobRuntime
from fedprompt.coordinator.store import MemberState, Store
from fedprompt.errors import ConfigError, NotFound, PreconditionFailed
from fedprompt.protocol import FlagView, TaskKind
from tests.fakes import SIZE, plain_update
from tests.support import open_round, tiny_job

NAMES = ("a", "b", "c", "d", "e")


def robust_job(tmp_path: Path, aggregator: str, **robust: object) -> str:
    config = tiny_job(tmp_path, rounds=4, participants_per_round=5, min_participants=3, round_deadline_s=30.0,
                      aggregator=aggregator)
    return dump_toml(dataclasses.replace(config, robust=RobustSection(**robust)))  # type: ignore[arg-type]


def send(job: JobRuntime, name: str, vector: np.ndarray) -> None:
    assert job.open is not None
    job.submit(name, plain_update(job.job_id, job.open.number, vector))


def play_round(job: JobRuntime, attacker: np.ndarray, rng: np.random.Generator) -> None:
    job.tick()
    assert job.open is not None
    for name in job.open.selected:
        vector = attacker if name == "e" else (np.ones(SIZE) + rng.normal(0, 0.05, SIZE))
        send(job, name, vector.astype(np.float32))


@dataclass
class Started:
    """A started robust job (4 rounds, all five of a..e per round, 3 needed) on its own SQLite file."""

    job: JobRuntime
    store: Store


StartJob = Callable[..., Started]


@pytest.fixture
def started(tmp_path: Path) -> StartJob:
    """Start a job of the named aggregator with the given ``robust`` settings."""
    def make(aggregator: str, **robust: object) -> Started:
        store = Store(tmp_path / f"{aggregator}.sqlite")
        jobs = JobManager(store)
        job = jobs.job(jobs.create_job(robust_job(tmp_path, aggregator, **robust)))
        for name in NAMES:
            job.join(name, 10, 5, SIZE)
        job.submit("a", plain_update(job.job_id, 0, np.zeros(SIZE, np.float32), 0))
        job.start()
        return Started(job, store)
    return make


def test_rejections_are_stored_and_k_consecutive_quarantine_until_release(started: StartJob) -> None:
    made = started("norm_bound", max_malicious=1, quarantine_after=2)
    job, store = made.job, made.store
    rng = np.random.default_rng(0)
    play_round(job, 50 * np.ones(SIZE), rng)
    view = job.view()
    assert view.rounds[0].rejected == ("e",) and view.quarantined == ()
    flags = job.flags()
    assert {(f.participant_id, f.accepted) for f in flags.flags} == {(n, n != "e") for n in NAMES}
    assert flags.streaks["e"] == 1 and all(f.score_name == "norm_over_median" for f in flags.flags)
    assert next(f.score for f in flags.flags if f.participant_id == "e") > 2.0

    play_round(job, 50 * np.ones(SIZE), rng)
    assert job.view().quarantined == ("e",)
    assert store.members(job.job_id)[-1].state is MemberState.QUARANTINED  # durable, not only in memory
    job.join("e", 10, 5, SIZE)  # re-joining does not lift a quarantine
    assert job.roster.quarantined() == ("e",)
    for name in NAMES:
        job.report_metrics(name, 2, {"accuracy": 0.5}, 5)
    job.tick()
    assert job.open is not None and "e" not in job.open.selected and len(job.open.selected) == 4
    task = job.next_task("e")
    assert task.kind is TaskKind.WAIT and "quarantined" in task.reason

    with pytest.raises(PreconditionFailed, match="not quarantined"):
        job.release("a")
    with pytest.raises(NotFound):
        job.release("zed")
    assert job.release("e") == "active"
    assert job.roster.quarantined() == () and job.flags().streaks["e"] == 0


def test_quarantines_that_leave_too_few_eligible_make_the_job_wait_not_end(tmp_path: Path) -> None:
    """A quarantine is no spent privacy budget: with fewer eligible members than the minimum the job waits
    (no round opens) and goes on once an admin releases one, instead of ending for good."""
    store = Store(tmp_path / "state.sqlite")
    jobs = JobManager(store)
    config = dataclasses.replace(tiny_job(tmp_path, rounds=3, participants_per_round=3, min_participants=3),
                                 robust=RobustSection(max_malicious=1, quarantine_after=1))
    job = jobs.job(jobs.create_job(dump_toml(dataclasses.replace(
        config, job=dataclasses.replace(config.job, aggregator="norm_bound")))))
    for name in ("a", "b", "c"):
        job.join(name, 10, 5, SIZE)
    job.submit("a", plain_update(job.job_id, 0, np.zeros(SIZE, np.float32), 0))
    job.start()
    job.roster.record_verdict(accepted=("a", "b"), rejected=("c",))
    assert job.roster.quarantined() == ("c",)
    job.tick()
    assert job.state.value == "running" and open_round(job) is None and "waiting for 3" in job.phase
    job.release("c")
    job.tick()
    opened = open_round(job)
    assert opened is not None and opened.selected == ("a", "b", "c")
    store.close()


def test_an_accepted_round_resets_the_streak(started: StartJob) -> None:
    job = started("norm_bound", max_malicious=1, quarantine_after=2).job
    rng = np.random.default_rng(1)
    play_round(job, 50 * np.ones(SIZE), rng)
    play_round(job, np.ones(SIZE), rng)
    assert job.flags().streaks["e"] == 0
    play_round(job, 50 * np.ones(SIZE), rng)
    assert job.roster.quarantined() == ()


def test_a_defence_refusing_at_aggregation_fails_the_attempt_and_keeps_state(started: StartJob) -> None:
    made = started("foolsgold", max_malicious=1)
    job, store = made.job, made.store
    job.tick()
    r = open_round(job)
    assert r is not None
    for name in r.selected:
        send(job, name, np.ones(SIZE, np.float32))  # all identical: every FoolsGold weight is 0
    rounds = job.view().rounds
    assert rounds[-1].state == "failed" and job.latest_version() == 0 and job.open is None
    assert job.flags().flags == () and job.state.value == "running"
    assert store.prompt(job.job_id, 1) is None


def test_krum_non_selection_never_quarantines(started: StartJob) -> None:
    job = started("krum", max_malicious=0, quarantine_after=1).job
    play_round(job, 50 * np.ones(SIZE), np.random.default_rng(2))
    assert len(job.view().rounds[0].rejected) == 4 and job.roster.quarantined() == ()


def test_creating_a_job_below_the_defence_minimum_names_the_key(tmp_path: Path) -> None:
    jobs = JobManager(Store(":memory:"))
    config = tiny_job(tmp_path, participants_per_round=5, min_participants=3, aggregator="krum")
    with pytest.raises(ConfigError, match="job.min_participants: krum .* needs at least 5"):
        jobs.create_job(dump_toml(dataclasses.replace(config, robust=RobustSection(max_malicious=1))))
    with pytest.raises(ConfigError, match="robust.max_malicious"):
        jobs.create_job(dump_toml(config).replace("max_malicious = 1", "max_malicious = -1"))


def test_a_restart_keeps_rejection_streaks(started: StartJob, tmp_path: Path) -> None:
    """One rejection before the restart and one after quarantine at K = 2: a restart is no clean slate."""
    made = started("norm_bound", max_malicious=1, quarantine_after=2)
    job, store = made.job, made.store
    rng = np.random.default_rng(0)
    play_round(job, 50 * np.ones(SIZE), rng)
    before = job.flags().streaks
    assert before["e"] == 1
    store.close()
    jobs = JobManager(Store(tmp_path / "norm_bound.sqlite"))
    resume_jobs(jobs)
    resumed = jobs.job(job.job_id)
    assert resumed.flags().streaks == before
    for name in NAMES:
        resumed.report_metrics(name, 1, {"accuracy": 0.5}, 5)
    play_round(resumed, 50 * np.ones(SIZE), rng)
    assert resumed.roster.quarantined() == ("e",)


def row(pid: str, round_: int, accepted: bool) -> FlagView:
    return FlagView(round_, 1, pid, accepted, 0.0, "score", "norm_bound")


def test_streaks_replay_exactly_including_releases() -> None:
    # e: rejected twice (quarantined at K = 2), released, rejected once more; a: rejected, accepted, rejected
    decisions = [row("e", 1, False), row("a", 1, False), row("e", 2, False), row("a", 2, True), row("a", 3, False),
                 row("e", 5, False)]
    assert rejection_streaks(decisions, limit=2) == {"e": 1, "a": 1}
    assert rejection_streaks(decisions, limit=0) == {"e": 3, "a": 1}  # no quarantine: nothing resets but acceptance
