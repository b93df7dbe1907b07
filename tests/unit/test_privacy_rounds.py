"""The round state machine with DP on: declines, budgets, per-round epsilon; driven directly on real SQLite."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fedprompt.config import DPSection, dump_toml
from fedprompt.coordinator.jobs import JobManager
from fedprompt.coordinator.runtime import JobRuntime
from fedprompt.coordinator.store import MemberState, Store
from fedprompt.errors import InvalidUpdate, NotSelected, StaleRound
from fedprompt.privacy import create_accountant
from fedprompt.protocol import PrivacyReport
from tests.fakes import SIZE, Clock, plain_update
from tests.support import tiny_job

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")


@dataclass
class DPJob:
    """A started DP job whose round 1 is open, in the coordinator ``jobs`` on ``store``."""

    jobs: JobManager
    job: JobRuntime
    store: Store


def start_job(tmp_path: Path, members: tuple[str, ...] = ("a", "b", "c"), **dp: object) -> DPJob:
    config = dataclasses.replace(tiny_job(tmp_path, rounds=3, participants_per_round=3, min_participants=2),
                                 dp=DPSection(enabled=True, **dp))  # type: ignore[arg-type]
    store = Store(tmp_path / "state.sqlite")
    jobs = JobManager(store, clock=Clock())
    job = jobs.job(jobs.create_job(dump_toml(config)))
    for name in members:
        job.join(name, 10, 5, SIZE)
    job.submit(members[0], plain_update(job.job_id, 0, np.zeros(SIZE, np.float32)))
    job.start()
    job.tick()
    return DPJob(jobs, job, store)


def report(job_id: str, round_: int, epsilon: float, declined: str = "") -> PrivacyReport:
    return PrivacyReport(job_id, round_, epsilon, 1e-3, bool(declined), declined)


def train_round(job: JobRuntime, names: tuple[str, ...], epsilons: tuple[float, ...]) -> None:
    assert job.open is not None
    r = job.open.number
    for name, eps in zip(names, epsilons, strict=True):
        job.report_privacy(name, report(job.job_id, r, eps))
        job.submit(name, plain_update(job.job_id, r, np.ones(SIZE, np.float32)))


def test_round_rows_carry_record_epsilon_max_and_median(tmp_path: Path) -> None:
    started = start_job(tmp_path)
    job, store = started.job, started.store
    train_round(job, ("a", "b", "c"), (1.0, 3.0, 2.0))
    summary = job.view().rounds[0].metrics
    assert (summary["record_epsilon_max"], summary["record_epsilon_median"]) == (3.0, 2.0)
    assert "participant_epsilon" not in summary
    store.close()


def test_declining_participant_leaves_the_round_and_later_selections(tmp_path: Path) -> None:
    started = start_job(tmp_path)
    jobs, job, store = started.jobs, started.job, started.store
    train_round(job, ("a", "b"), (1.0, 1.0))
    job.report_privacy("c", report(job.job_id, 1, 2.5, "record-level privacy budget: would spend 3.1 > 3"))
    assert job.latest_version() == 1, "the round aggregates once every remaining selected member reported"
    job.tick()
    assert job.open is not None and job.open.selected == ("a", "b")
    with pytest.raises(NotSelected):
        job.submit("c", plain_update(job.job_id, 2, np.ones(SIZE, np.float32)))
    job.join("c", 10, 5, SIZE)  # a restarted participant does not get its budget back
    assert job.roster.members["c"].state is MemberState.EXHAUSTED
    people = {p.participant_id: p for p in jobs.participants(job.job_id)}
    assert people["c"].state == MemberState.EXHAUSTED.value and "budget" in people["c"].reason and people["c"].record_epsilon == 2.5
    assert people["a"].state == "active" and people["a"].reason == ""
    train_round(job, ("a", "b"), (1.5, 1.5))
    assert job.latest_version() == 2 and job.state.value == "running"
    store.close()


def test_decline_below_minimum_retries_then_job_ends_without_enough_budget(tmp_path: Path) -> None:
    started = start_job(tmp_path)
    job, store = started.job, started.store
    job.report_privacy("a", report(job.job_id, 1, 2.9, "budget"))
    job.report_privacy("b", report(job.job_id, 1, 2.9, "budget"))
    assert job.open is None, "fewer than min_participants left selected: the attempt fails at once"
    job.tick()
    assert job.state.value == "done" and "privacy budget left" in job.lifecycle.reason
    store.close()


def test_participant_level_budget_stops_the_job(tmp_path: Path) -> None:
    started = start_job(tmp_path, participant_noise_multiplier=3.0, participant_epsilon=1.2, participant_delta=1e-3)
    job, store = started.job, started.store
    train_round(job, ("a", "b", "c"), (1.0, 1.0, 1.0))
    first = job.view().rounds[0].metrics["participant_epsilon"]
    assert 0 < first <= 1.2
    job.tick()
    assert job.state.value == "done" and "participant-level privacy budget reached" in job.lifecycle.reason
    assert job.latest_version() == 1 and job.open is None
    persisted = create_accountant("rdp")  # the ledger as stored: exactly the one aggregated round
    persisted.load_json(store.accountant_state(job.job_id) or "")
    assert persisted.history == [(3.0, 1.0, 1)] and persisted.get_epsilon(1e-3) == first
    store.close()


@pytest.mark.parametrize("bad, match", [
    (PrivacyReport("?", 1, math.nan, 1e-3), "epsilon"),
    (PrivacyReport("?", 1, -1.0, 1e-3), "epsilon"),
    (PrivacyReport("?", 1, 1.0, 1.0), "delta"),
    (PrivacyReport("?", 1, 1.0, 1e-3, True, ""), "say why"),
    (PrivacyReport("?", 1, 1.0, 1e-3, False, "x" * 501), "reason"),
])
def test_bad_privacy_reports_are_refused_and_state_stays(tmp_path: Path, bad: PrivacyReport, match: str) -> None:
    started = start_job(tmp_path)
    job, store = started.job, started.store
    with pytest.raises(InvalidUpdate, match=match):
        job.report_privacy("a", dataclasses.replace(bad, job_id=job.job_id))
    with pytest.raises(StaleRound):
        job.report_privacy("a", report(job.job_id, 2, 1.0))
    assert store.privacy_reports(job.job_id) == [] and job.roster.members["a"].state is MemberState.ACTIVE
    store.close()


def test_privacy_report_refused_when_job_has_no_dp(tmp_path: Path) -> None:
    jobs = JobManager(Store(tmp_path / "s.sqlite"), clock=Clock())
    job = jobs.job(jobs.create_job(dump_toml(tiny_job(tmp_path))))
    job.join("a", 10, 5, SIZE)
    with pytest.raises(InvalidUpdate, match="differential privacy"):
        job.report_privacy("a", report(job.job_id, 1, 1.0))
