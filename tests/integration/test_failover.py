"""Coordinator failover with real processes on a real PostgreSQL server: two replicas share one store, one holds
the lease and serves, the other stands by without listening.  The active one hangs (SIGSTOP) while a round
collects; the standby takes the lease over, rebuilds the job as a restart does and serves; the hung one wakes
up (SIGCONT), finds itself deposed, writes nothing and exits in one line.  The job finishes on the new replica
with the prompt an uninterrupted run reaches, every completed round counted once.

While it stands by, a replica serves gRPC health NOT_SERVING on its address (a liveness probe sees it alive, a
readiness probe sends it no traffic) and refuses every other call UNAVAILABLE, so a participant given both
addresses moves on to the active one; SIGTERM ends its wait cleanly.
"""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from fedprompt.app.admin_client import AdminClient
from fedprompt.app.bench.pgserver import free_port
from fedprompt.app.synthetic import SyntheticParticipant, synthetic_examples
from fedprompt.config import dump_toml
from fedprompt.coordinator.store import Store
from fedprompt.participant.grpc_link import GrpcLink
from fedprompt.v1 import participant_pb2, participant_pb2_grpc
from fedprompt.wire.channel import open_channel
from tests.faults import NAMES, CoordinatorProcess, exported, scripted, train_round, uninterrupted_final
from tests.support import health, tiny_job, wait_for

pytestmark = pytest.mark.slow

TTL = 2


def test_a_standby_takes_over_a_hung_coordinator_which_wakes_up_deposed(tmp_path: Path, postgres_url: str) -> None:
    seed, rounds = 0, 3
    config_toml = dump_toml(tiny_job(tmp_path, rounds=rounds, participants_per_round=3, min_participants=3,
                                     round_deadline_s=60.0, seed=seed))
    shared = (f"coordinator.store={postgres_url}", f"coordinator.lease_ttl_s={TTL}")
    first = CoordinatorProcess(tmp_path / "a", free_port(), *shared, "coordinator.replica=a").start()
    standby = CoordinatorProcess(tmp_path / "b", free_port(), *shared, "coordinator.replica=b").launch()
    try:
        wait_for(lambda: "standing by" in standby.log(1), 60, what="replica b standing by")
        admin = AdminClient(first.target)
        job_id = admin.create_job(config_toml)
        people = scripted(first.target, job_id, seed)
        for p in people.values():
            p.join()
        admin.start(job_id)
        for p in people.values():
            train_round(p, 1)
        train_round(people["a"], 2)  # round 2 collects at a: a's update is in a's memory only
        wait_for(lambda: admin.status(job_id).rounds[-1].reported == ("a",), 10, what="a's round-2 update")
        admin.close()
        assert first.proc is not None and standby.proc is not None
        first.proc.send_signal(signal.SIGSTOP)  # a hangs: it stops renewing its lease
        standby.listening(timeout=30)
        first.proc.send_signal(signal.SIGCONT)  # a wakes up: its next renewal finds b's token
        assert first.proc.wait(30) == 2
        admin = AdminClient(standby.target)
        people = scripted(standby.target, job_id, seed)
        for p in people.values():
            p.join()
        for round_ in (2, 3):
            for p in people.values():
                train_round(p, round_)
        status = wait_for(lambda: (s := admin.status(job_id)).state == "done" and s, 30, what="job done on b")
        final = exported(admin, job_id, rounds, tmp_path / "final.safetensors")
        admin.close()
    finally:
        if first.proc is not None and first.proc.poll() is None:
            first.proc.send_signal(signal.SIGCONT)
        first.stop()
        assert standby.stop() == 0, standby.log(1)
    deposed = [line for line in first.log(1).splitlines() if line.startswith("fedprompt: error: ")]
    assert deposed == ["fedprompt: error: replica a: deposed: another replica took the lease over; start this one "
                       "again to stand by"]
    assert "Traceback" not in first.log(1) + standby.log(1)
    assert "lease taken: this replica is active" in standby.log(1) and "token=2" in standby.log(1)
    assert "round 2 restarted cleanly: partial sum not recoverable" in standby.log(1)
    attempts = [(r.round, r.attempt, r.state) for r in status.rounds]
    assert attempts == [(1, 1, "done"), (2, 1, "failed"), (2, 2, "done"), (3, 1, "done")]
    for r in status.rounds:
        if r.state == "done":  # each completed round aggregated once, every participant counted once
            assert r.metrics["updates"] == 3.0 and r.metrics["examples"] == sum(synthetic_examples(n) for n in NAMES)
    np.testing.assert_allclose(final, uninterrupted_final(config_toml, seed, rounds), rtol=0, atol=1e-7)
    store = Store(postgres_url)
    assert store.lease()[:2] == ("b", 2) and store.latest_version(job_id) == rounds
    assert [(r.round, r.attempt) for r in store.rounds(job_id)] == [(1, 1), (2, 1), (2, 2), (3, 1)]


def test_a_standby_serves_health_not_serving_refuses_calls_unavailable_stops_cleanly_and_serves_once_active(
        tmp_path: Path, postgres_url: str) -> None:
    shared = (f"coordinator.store={postgres_url}", f"coordinator.lease_ttl_s={TTL}")
    first = CoordinatorProcess(tmp_path / "a", free_port(), *shared, "coordinator.replica=a").start()
    standby = CoordinatorProcess(tmp_path / "b", free_port(), *shared, "coordinator.replica=b").launch()
    try:
        wait_for(lambda: "standing by" in standby.log(1), 60, what="replica b standing by")
        assert health(standby.target) == health_pb2.HealthCheckResponse.NOT_SERVING  # listening, not ready
        assert health(first.target) == health_pb2.HealthCheckResponse.SERVING
        channel = open_channel(standby.target, None)
        with pytest.raises(grpc.RpcError) as refused:
            participant_pb2_grpc.ParticipantServiceStub(channel).DescribeJob(
                participant_pb2.DescribeJobRequest(job="any"), metadata=(("x-fedprompt-identity", "a"),), timeout=5)
        channel.close()
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "replica b is standing by" in str(refused.value.details())
        admin = AdminClient(first.target)
        job_id = admin.create_job(dump_toml(tiny_job(tmp_path, rounds=1, participants_per_round=1,
                                                     min_participants=1)))
        admin.close()
        link = GrpcLink(f"{standby.target},{first.target}", "a", retry_initial_s=0.05, retry_max_s=0.2,
                        give_up_after_s=30)
        participant = SyntheticParticipant(link, "a", job_id, 64)
        assert participant.join().job_id == job_id  # refused by the standby, answered by the active replica
        assert link.current == 1
        third = CoordinatorProcess(tmp_path / "c", free_port(), *shared, "coordinator.replica=c").launch()
        wait_for(lambda: "standing by" in third.log(1), 60, what="replica c standing by")
        assert third.stop() == 0  # SIGTERM while standing by: a clean exit, the lease untouched
        assert "standby stopped before taking the lease" in third.log(1) and "Traceback" not in third.log(1)
        assert Store(postgres_url).lease()[:2] == ("a", 1)
        assert first.stop() == 0  # a graceful stop releases the lease: b takes it over at once
        standby.listening(timeout=30)
        wait_for(lambda: health(standby.target) == health_pb2.HealthCheckResponse.SERVING, 30, what="b SERVING")
        assert link.describe(job_id).job_id == job_id  # a is gone: the link is back on b
        assert link.current == 0
        link.close()
    finally:
        first.stop()
        assert standby.stop() == 0, standby.log(1)
    assert "Traceback" not in first.log(1) + standby.log(1)
    assert "standby serving health" in standby.log(1) and "lease released" in first.log(1)
