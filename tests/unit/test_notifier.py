"""Long-poll wake-ups: a job's waiters are woken when what their tasks depend on changed, not on every call, so a
round of N updates wakes them a number of times that does not grow with N (it used to wake all N waiters on each
of the round's 2N calls)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from fedprompt.config import dump_toml
from fedprompt.coordinator.jobs import JobManager
from fedprompt.coordinator.notifier import Notifier
from fedprompt.coordinator.runtime import JobRuntime
from fedprompt.coordinator.store import Store
from fedprompt.coordinator.tasks import dispatch_state
from fedprompt.protocol import TaskKind
from tests.fakes import SIZE, Clock, plain_update
from tests.support import tiny_job


def test_waiters_wake_only_when_their_jobs_state_changes() -> None:
    async def scenario() -> list[str]:
        notifier = Notifier()
        woke: list[str] = []

        async def settle() -> None:  # let every woken waiter run to its end (``wait_for`` adds loop steps)
            for _ in range(10):
                await asyncio.sleep(0)

        async def waiter(name: str, job_id: str) -> None:
            await notifier.wait(job_id, 30.0)
            woke.append(name)

        notifier.changed("a", ("training", 1))
        waiters = [asyncio.create_task(waiter(f"a{i}", "a")) for i in range(3)] + [asyncio.create_task(waiter("b0", "b"))]
        await settle()
        for _ in range(100):  # calls that change nothing the waiters' tasks depend on
            notifier.changed("a", ("training", 1))
        await settle()
        assert woke == [] and notifier.wakeups == 0
        notifier.changed("a", ("done", 1))  # the round closed: job a's waiters, and only they, wake once
        await settle()
        assert sorted(woke) == ["a0", "a1", "a2"] and notifier.wakeups == 1
        notifier.notify()  # an admin action or a revocation: every waiter wakes
        await asyncio.gather(*waiters)
        return woke

    assert asyncio.run(scenario())[-1] == "b0"


def _changes_over_one_round(tmp_path: Path, members: int) -> int:
    """How often ``dispatch_state`` moves while ``members`` members evaluate, train and upload one round."""
    store = Store(tmp_path / f"state-{members}.sqlite")
    try:
        jobs = JobManager(store, clock=Clock())
        job_id = jobs.create_job(dump_toml(tiny_job(tmp_path, rounds=1, participants_per_round=members,
                                                    min_participants=members)))
        job = jobs.job(job_id)
        names = [f"p{i:03d}" for i in range(members)]
        for name in names:
            job.join(name, 10, 5, SIZE)
        job.submit(names[0], plain_update(job_id, 0, np.zeros(SIZE, np.float32)))
        job.start()
        states = [dispatch_state(job)]
        job.tick()
        states.append(dispatch_state(job))
        for name in names:
            assert job.next_task(name).kind is TaskKind.EVALUATE
            job.report_metrics(name, 0, {"loss": 1.0}, 5)
            states.append(dispatch_state(job))
            assert job.next_task(name).kind is TaskKind.TRAIN
            job.submit(name, plain_update(job_id, 1, np.ones(SIZE, np.float32)))
            states.append(dispatch_state(job))
        assert job.latest_version() == 1 and len(states) == 2 * members + 2
        return sum(a != b for a, b in zip(states, states[1:], strict=False))
    finally:
        store.close()


def test_a_rounds_wake_ups_do_not_grow_with_its_members(tmp_path: Path) -> None:
    # The round opening and the round closing (a new version, the job done): two wake-ups, for 3 members or 30.
    assert _changes_over_one_round(tmp_path, 3) == _changes_over_one_round(tmp_path, 30) == 2


def test_the_state_covers_what_turns_a_wait_into_work(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.sqlite")
    try:
        jobs = JobManager(store, clock=Clock())
        job: JobRuntime = jobs.job(jobs.create_job(dump_toml(tiny_job(tmp_path, rounds=2))))
        for name in ("a", "b", "c"):
            job.join(name, 10, 5, SIZE)
        before = dispatch_state(job)
        assert job.next_task("b").kind is TaskKind.WAIT
        job.submit("a", plain_update(job.job_id, 0, np.zeros(SIZE, np.float32)))
        assert job.next_task("b").kind is TaskKind.EVALUATE and dispatch_state(job) != before
    finally:
        store.close()
