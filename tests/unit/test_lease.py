"""Failover between coordinator replicas sharing one database: the lease and its fencing token.

A standby takes the lease only once it lapses, with a higher token; a deposed replica that wakes up cannot
write (its store refuses before any row changes), so nothing it does after the takeover is kept and no round
is aggregated twice; a takeover waits for a write in flight.  The lease logic runs on both databases; the
two-connection cases on the real PostgreSQL server (``postgres_url``).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from fedprompt.config import dump_toml
from fedprompt.coordinator.jobs import JobManager
from fedprompt.coordinator.lease import Lease
from fedprompt.coordinator.recovery import resume_jobs
from fedprompt.coordinator.store import Store
from fedprompt.errors import Deposed
from tests.fakes import SIZE, Clock, plain_update
from tests.support import tiny_job

TTL = 1.0


def lapse(ttl: float = TTL) -> None:
    time.sleep(ttl + 0.2)


def test_a_standby_takes_the_lease_only_once_it_lapses_and_with_a_higher_token(store_location: str) -> None:
    first, second = Lease(Store(store_location), "a", TTL), Lease(Store(store_location), "b", TTL)
    assert first.wait() == 1
    assert second.store.acquire_lease("b", TTL) is None  # a's lease runs
    holder, token, left = second.store.lease()
    assert (holder, token) == ("a", 1) and 0 < left <= TTL
    first.renew()
    lapse()
    assert second.wait() == 2 and second.store.lease()[:2] == ("b", 2)
    with pytest.raises(Deposed, match="taken over by b"):
        first.renew()


def test_a_deposed_replica_writes_nothing(store_location: str) -> None:
    old, new = Lease(Store(store_location), "a", TTL), Lease(Store(store_location), "b", TTL)
    old.wait()
    old.store.add_job("j1", "one", "x = 1", "created")
    lapse()  # a is paused (a long GC, a partition): its lease lapses and b takes over
    new.wait()
    with pytest.raises(Deposed, match=r"lease \(token 1\) was taken over"):
        old.store.add_job("j2", "two", "x = 2", "created")
    with pytest.raises(Deposed):
        old.store.set_job_state("j1", "running")
    new.store.set_job_state("j1", "paused", "by b")
    assert [(j.job_id, j.state, j.reason) for j in new.store.jobs()] == [("j1", "paused", "by b")]


def test_a_released_lease_is_taken_at_once(store_location: str) -> None:
    old, new = Lease(Store(store_location), "a", 60.0), Lease(Store(store_location), "b", 60.0)
    old.wait()
    assert new.store.acquire_lease("b", 60.0) is None
    old.release()
    assert new.wait(stopped=lambda: False, sleep=lambda _: pytest.fail("waited for a released lease")) == 2


def test_a_standby_told_to_stop_returns_without_the_lease(store_location: str) -> None:
    Lease(Store(store_location), "a", 60.0).wait()
    naps: list[float] = []
    standby = Lease(Store(store_location), "b", 60.0)
    assert standby.wait(stopped=lambda: len(naps) == 2, sleep=naps.append) is None
    assert naps == [20.0, 20.0] and standby.store.token is None


def test_a_takeover_waits_for_the_write_in_flight_which_commits_first(postgres_url: str) -> None:
    old, new = Lease(Store(postgres_url), "a", TTL), Lease(Store(postgres_url), "b", TTL)
    old.wait()
    lapse()
    took: list[int | None] = []
    with old.store._tx() as tx:  # a's write checked its token and holds the lease row...
        tx.execute("INSERT INTO jobs VALUES ('late', 'late', '', 'created', '', 0, 0)")
        waiter = threading.Thread(target=lambda: took.append(new.wait()))
        waiter.start()
        time.sleep(0.5)
        assert took == []  # ...so b's takeover waits
    waiter.join(10)
    assert took == [2] and [j.job_id for j in new.store.jobs()] == ["late"]


def test_a_standby_rebuilds_the_jobs_and_the_deposed_one_aggregates_nothing(store_location: str,
                                                                            tmp_path: Path) -> None:
    clock = Clock()
    active = Lease(Store(store_location), "a", TTL)
    active.wait()
    jobs = JobManager(active.store, clock=clock, offline_after_s=60.0)
    job_id = jobs.create_job(dump_toml(tiny_job(tmp_path, rounds=2, participants_per_round=3, min_participants=3,
                                                round_deadline_s=30.0)))
    job = jobs.job(job_id)
    for name in ("a", "b", "c"):
        job.join(name, 10, 5, SIZE)
    job.submit("a", plain_update(job_id, 0, np.zeros(SIZE, np.float32)))
    job.start()
    job.tick()
    deltas = {n: np.full(SIZE, k + 1.0, np.float32) for k, n in enumerate(("a", "b", "c"))}
    job.submit("a", plain_update(job_id, 1, deltas["a"], 10))
    lapse()  # a hangs here; b takes over and rebuilds every job as a restart does
    standby = Lease(Store(store_location), "b", TTL)
    assert standby.wait() == 2
    resumed = JobManager(standby.store, clock=clock, offline_after_s=60.0)
    resume_jobs(resumed)
    taken = resumed.job(job_id)
    assert taken.open is not None and (taken.open.number, taken.open.attempt) == (1, 2)
    for name in ("b", "c"):  # a wakes up and finishes round 1 on its own: refused at its first write
        with pytest.raises(Deposed):
            job.submit(name, plain_update(job_id, 1, deltas[name], 10))
    for name in ("a", "b", "c"):
        taken.submit(name, plain_update(job_id, 1, deltas[name], 10))
    rounds = [(r.round, r.attempt, r.state) for r in standby.store.rounds(job_id)]
    assert rounds == [(1, 1, "failed"), (1, 2, "done")]  # round 1 aggregated once, by b
    version = standby.store.prompt(job_id, 1)
    assert version is not None and standby.store.latest_version(job_id) == 1
    np.testing.assert_array_equal(np.frombuffer(version[1], "<f4"), np.full(SIZE, 2.0, np.float32))


def test_a_standby_keeps_standing_by_through_a_lost_connection(postgres_url: str) -> None:
    import psycopg

    Lease(Store(postgres_url), "a", TTL).wait()
    standby = Lease(Store(postgres_url), "b", TTL)
    naps: list[float] = []

    def nap(seconds: float) -> None:
        if not naps:  # the server drops every coordinator connection (a restart, a failover of the database)
            with psycopg.connect(postgres_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                              "current_database() AND application_name = 'fedprompt-coordinator'")
        naps.append(seconds)
        time.sleep(seconds)

    with capture_logs() as logs:
        assert standby.wait(sleep=nap) == 2  # a never renews: b takes over once a's lease lapses
    warned = [e for e in logs if e["event"] == "standing by: the store is unreachable, trying again"]
    assert len(warned) == 1 and warned[0]["replica"] == "b" and len(naps) >= 3
    assert standby.store.lease()[:2] == ("b", 2)
