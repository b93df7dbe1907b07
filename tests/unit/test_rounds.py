"""The round state machine, driven directly (no network) with a controllable clock and a real SQLite file."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fedprompt.config import HESection, dump_toml
from fedprompt.coordinator.jobs import JobManager
from fedprompt.coordinator.rounds import KEY_GRACE_S
from fedprompt.coordinator.runtime import JobRuntime
from fedprompt.coordinator.store import Store
from fedprompt.crypto.ckks import SecretContext
from fedprompt.errors import DuplicateUpdate, InvalidUpdate, JobStateError, NotEnrolled, NotSelected, StaleRound
from fedprompt.protocol import Payload, TaskKind
from fedprompt.wire.payload import decode_vector
from tests.fakes import SIZE, Clock, encrypted_initial, exchange_key, plain_update
from tests.support import open_round, tiny_job


@dataclass
class ThreeMembers:
    """A created job (2 rounds, 2 to 3 per round, 30 s deadline) that a, b and c joined; a gave version 0."""

    job: JobRuntime
    clock: Clock
    store: Store


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[ThreeMembers]:
    clock = Clock()
    store = Store(tmp_path / "state.sqlite")
    jobs = JobManager(store, clock=clock)
    job_id = jobs.create_job(dump_toml(tiny_job(tmp_path, rounds=2, participants_per_round=3, min_participants=2,
                                                round_deadline_s=30.0)))
    job = jobs.job(job_id)
    for name in ("a", "b", "c"):
        job.join(name, 10, 5, SIZE)
    job.submit("a", plain_update(job_id, 0, np.zeros(SIZE, np.float32)))
    yield ThreeMembers(job, clock, store)
    store.close()


def test_first_member_provides_initial_prompt_others_wait(setup: ThreeMembers) -> None:
    job = setup.job
    assert job.latest_version() == 0
    with pytest.raises(StaleRound):
        job.submit("a", plain_update(job.job_id, 0, np.ones(SIZE, np.float32)))


def test_round_opens_on_start_and_tasks_evaluate_before_train(setup: ThreeMembers) -> None:
    job = setup.job
    assert job.next_task("b").kind is TaskKind.EVALUATE
    job.start()
    job.tick()
    assert job.open is not None and job.open.selected == ("a", "b", "c")
    job.report_metrics("b", 0, {"accuracy": 0.5}, 5)
    task = job.next_task("b")
    assert (task.kind, task.round, task.global_version) == (TaskKind.TRAIN, 1, 0)


def test_fedavg_is_example_weighted_mean_of_deltas(setup: ThreeMembers) -> None:
    job, store = setup.job, setup.store
    job.start()
    job.tick()
    deltas = {"a": (np.full(SIZE, 1.0, np.float32), 10), "b": (np.full(SIZE, 4.0, np.float32), 5),
              "c": (np.arange(SIZE, dtype=np.float32), 5)}
    for name, (delta, n) in deltas.items():
        job.submit(name, plain_update(job.job_id, 1, delta, n))
    assert job.latest_version() == 1 and job.open is None
    stored = store.prompt(job.job_id, 1)
    assert stored is not None
    encoding, data = stored
    got = decode_vector(Payload(job.job_id, 1, encoding, SIZE, data), SIZE)
    expected = (10 * deltas["a"][0] + 5 * deltas["b"][0] + 5 * deltas["c"][0]) / 20
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_rejections_leave_the_round_intact(setup: ThreeMembers) -> None:
    job = setup.job
    job.start()
    job.tick()
    good = np.ones(SIZE, np.float32)
    with pytest.raises(InvalidUpdate):
        job.submit("a", plain_update(job.job_id, 1, np.ones(SIZE + 1, np.float32)))
    bad = good.copy()
    bad[2] = np.nan
    with pytest.raises(InvalidUpdate):
        job.submit("a", plain_update(job.job_id, 1, bad))
    with pytest.raises(StaleRound):
        job.submit("a", plain_update(job.job_id, 2, good))
    with pytest.raises(NotEnrolled):
        job.submit("mallory", plain_update(job.job_id, 1, good))
    job.submit("a", plain_update(job.job_id, 1, good))
    with pytest.raises(DuplicateUpdate):
        job.submit("a", plain_update(job.job_id, 1, good))
    r = open_round(job)
    assert r is not None and list(r.reported) == ["a"]
    job.submit("b", plain_update(job.job_id, 1, good))
    job.submit("c", plain_update(job.job_id, 1, good))
    assert job.latest_version() == 1


def test_unselected_participant_is_refused(tmp_path: Path) -> None:
    jobs = JobManager(Store(tmp_path / "s.sqlite"), clock=Clock())
    job = jobs.job(jobs.create_job(dump_toml(tiny_job(tmp_path, participants_per_round=2, min_participants=2))))
    for name in ("a", "b", "c"):
        job.join(name, 10, 5, SIZE)
    job.submit("a", plain_update(job.job_id, 0, np.zeros(SIZE, np.float32)))
    job.start()
    job.tick()
    assert job.open is not None
    outsider = next(p for p in ("a", "b", "c") if p not in job.open.selected)
    with pytest.raises(NotSelected):
        job.submit(outsider, plain_update(job.job_id, 1, np.ones(SIZE, np.float32)))


def test_deadline_aggregates_with_minimum_else_retries_then_pauses(setup: ThreeMembers) -> None:
    job, clock = setup.job, setup.clock
    job.start()
    job.tick()
    job.submit("a", plain_update(job.job_id, 1, np.ones(SIZE, np.float32)))
    job.submit("b", plain_update(job.job_id, 1, np.ones(SIZE, np.float32)))
    clock.now += 31
    job.tick()
    assert job.latest_version() == 1  # 2 of 3 >= min_participants
    assert job.open is not None and job.open.number == 2
    for attempt in (1, 2, 3):
        assert job.open is not None and job.open.attempt == attempt
        job.submit("a", plain_update(job.job_id, 2, np.ones(SIZE, np.float32)))
        clock.now += 31
        job.tick()
    assert job.state.value == "paused" and "failed 3 times" in job.lifecycle.reason
    assert job.latest_version() == 1


def test_late_update_is_refused(setup: ThreeMembers) -> None:
    job, clock = setup.job, setup.clock
    job.start()
    job.tick()
    clock.now += 31
    with pytest.raises(StaleRound):
        job.submit("a", plain_update(job.job_id, 1, np.ones(SIZE, np.float32)))


def test_job_completes_and_reports_done(setup: ThreeMembers) -> None:
    job = setup.job
    job.start()
    for round_ in (1, 2):
        job.tick()
        for name in ("a", "b", "c"):
            job.submit(name, plain_update(job.job_id, round_, np.ones(SIZE, np.float32)))
    assert job.state.value == "done"
    for name in ("a", "b", "c"):
        job.report_metrics(name, 2, {"accuracy": 1.0}, 5)
        assert job.next_task(name).kind is TaskKind.DONE
    view = job.view()
    assert [r.round for r in view.rounds] == [1, 2] and view.rounds[-1].metrics["accuracy"] == 1.0
    with pytest.raises(JobStateError):
        job.start()


def test_vector_size_mismatch_refused_at_join(setup: ThreeMembers) -> None:
    job = setup.job
    with pytest.raises(InvalidUpdate, match="prompt parameters"):
        job.join("d", 10, 5, SIZE + 1)


def test_weighted_metrics_average_each_key_over_the_reports_that_carry_it(setup: ThreeMembers) -> None:
    job = setup.job
    job.report_metrics("a", 0, {"accuracy": 1.0, "pseudo_labels": 8.0}, 1)
    job.report_metrics("b", 0, {"accuracy": 0.0}, 3)
    means, reports = job.store.metric_means(job.job_id, 0)
    assert reports == 2
    assert means == {"accuracy": 0.25, "pseudo_labels": 8.0}


def test_encrypted_round_waits_briefly_for_a_key_in_flight(tmp_path: Path) -> None:
    clock = Clock()
    store = Store(tmp_path / "he.sqlite")
    jobs = JobManager(store, clock=clock)
    config = dataclasses.replace(tiny_job(tmp_path, rounds=1, participants_per_round=2, min_participants=1),
                                 he=HESection(enabled=True, mode="single_key"))
    job = jobs.job(jobs.create_job(dump_toml(config)))
    assert job.join("a", 10, 5, SIZE, exchange_key()).deal_keys
    secret = SecretContext.create(config.he.params())
    job.relay.publish_context("a", secret.public_bytes(), secret.key_id)
    job.submit("a", encrypted_initial(secret, job.job_id))
    assert not job.join("b", 10, 5, SIZE, exchange_key()).deal_keys
    assert job.next_task("b").kind is TaskKind.WAIT  # no key yet: no work
    job.start()
    job.tick()
    assert open_round(job) is None  # b's key may be on its way
    clock.now += KEY_GRACE_S + 1
    job.next_task("a")
    job.tick()
    assert job.open is not None and job.open.selected == ("a",)  # b never got a key: the round goes on
    store.close()
