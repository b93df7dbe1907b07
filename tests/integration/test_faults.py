"""Fault injection with real processes and SIGKILL, each scenario over several seeds.

- the coordinator is killed while a round is collecting, restarted on the same state: the round restarts
  cleanly, the job completes with the prompt an uninterrupted run reaches from the same updates;
- a participant is killed in the middle of an upload stream: the round completes with the others and the
  partial upload counts for nothing;
- a participant daemon is killed after submitting and restarted: it rejoins and works on the next round,
  and no update is counted twice;
- the coordinator is unreachable for 30 s: participant daemons reconnect by themselves and finish the job.
"""

from __future__ import annotations

import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from coordinator.checkpoint import read_checkpoint
from coordinator.jobs import JobManager
from coordinator.store import Store
from fedprompt.admin_client import AdminClient, load_prompt
from fedprompt.config import dump_toml
from fedprompt.payload import decode_vector
from fedprompt.simulation import LocalLink
from participant.grpc_link import GrpcLink
from participant.synthetic import SyntheticParticipant, synthetic_delta, synthetic_examples, synthetic_initial
from tests.faults import CoordinatorProcess, free_port, module_process, train_round
from tests.support import stopping, tiny_job, wait_for

pytestmark = pytest.mark.slow

SIZE = 64
NAMES = ("a", "b", "c")


def scripted(target: str, job_id: str, seed: int, names: tuple[str, ...] = NAMES) -> dict[str, SyntheticParticipant]:
    links = {n: GrpcLink(target, n, retry_initial_s=0.1, retry_max_s=0.5, give_up_after_s=60) for n in names}
    return {n: SyntheticParticipant(links[n], n, job_id, SIZE, seed) for n in names}


def uninterrupted_final(config_toml: str, seed: int, rounds: int) -> np.ndarray:
    """The final prompt of the same job with the same updates and no fault, on the real round machinery."""
    jobs = JobManager(Store(":memory:"))
    job = jobs.job(jobs.create_job(config_toml))
    people = [SyntheticParticipant(LocalLink(jobs, n), n, job.job_id, SIZE, seed) for n in NAMES]
    for p in people:
        p.join()
    job.start()
    for round_ in range(1, rounds + 1):
        job.tick()
        for p in people:
            p.link.upload(p.update(round_))
    encoding, data = jobs.store.prompt(job.job_id, rounds)
    return np.frombuffer(data, dtype="<f4")


def exported(admin: AdminClient, job_id: str, version: int, out: Path) -> np.ndarray:
    return load_prompt(admin.export(job_id, out, version))[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coordinator_killed_while_collecting_resumes_and_ends_as_uninterrupted(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    rounds, crash_round = 3, rng.randint(1, 3)
    reporters = sorted(rng.sample(NAMES, rng.randint(1, 2)))  # updates in memory when the coordinator dies
    config_toml = dump_toml(tiny_job(tmp_path, rounds=rounds, participants_per_round=3, min_participants=3,
                                     round_deadline_s=60.0, seed=seed))
    coordinator = CoordinatorProcess(tmp_path, free_port()).start()
    try:
        admin = AdminClient(coordinator.target)
        job_id = admin.create_job(config_toml)
        people = scripted(coordinator.target, job_id, seed)
        for p in people.values():
            p.join()
        admin.start(job_id)
        for round_ in range(1, rounds + 1):
            if round_ != crash_round:
                for p in people.values():
                    train_round(p, round_)
                continue
            for name in reporters:
                train_round(people[name], round_)
            wait_for(lambda: admin.status(job_id).rounds[-1].reported == tuple(reporters), 10, what="updates in")
            coordinator.kill()
            retrier = people[reporters[0]]
            with ThreadPoolExecutor(1) as pool:  # its upload is retried (UNAVAILABLE) until the coordinator is back
                retry = pool.submit(retrier.link.upload, retrier.update(round_))
                time.sleep(1.0)
                coordinator.start()
                retry.result(timeout=30)
            for p in people.values():
                if p is not retrier:
                    train_round(p, round_)
        status = wait_for(lambda: (s := admin.status(job_id)).state == "done" and s, 30, what="job done")
        final = exported(admin, job_id, rounds, tmp_path / "final.safetensors")
        admin.close()
    finally:
        assert coordinator.stop() == 0, coordinator.log(coordinator.starts)
    assert f"round {crash_round} restarted cleanly: partial sum not recoverable" in coordinator.log(2)
    attempts = [(r.round, r.attempt, r.state, r.metrics.get("restarted")) for r in status.rounds]
    assert (crash_round, 1, "failed", 1.0) in attempts and (crash_round, 2, "done", None) in attempts
    weights = sum(synthetic_examples(n) for n in NAMES)
    for r in status.rounds:
        if r.state == "done":  # every completed round counted each participant exactly once
            assert r.metrics["updates"] == 3.0 and r.metrics["examples"] == weights
    np.testing.assert_allclose(final, uninterrupted_final(config_toml, seed, rounds), rtol=0, atol=1e-7)
    checkpoint, _ = read_checkpoint(tmp_path / "coordinator-state" / "checkpoints" / f"{job_id}.safetensors")
    assert checkpoint.round == rounds
    np.testing.assert_array_equal(decode_vector(checkpoint, SIZE), final)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_participant_killed_mid_upload_round_completes_with_the_others(tmp_path: Path, seed: int) -> None:
    config_toml = dump_toml(tiny_job(tmp_path, rounds=1, participants_per_round=3, min_participants=2,
                                     round_deadline_s=4.0, seed=seed))
    victim = NAMES[seed % 3]
    others = [n for n in NAMES if n != victim]
    coordinator = CoordinatorProcess(tmp_path, free_port()).start()
    try:
        admin = AdminClient(coordinator.target)
        job_id = admin.create_job(config_toml)
        people = scripted(coordinator.target, job_id, seed, tuple(others))
        for p in people.values():
            p.join()
        stall_log = tmp_path / "stalled.log"
        stalled = module_process("tests.stall", ["--coordinator", coordinator.target, "--job", job_id, "--name",
                                                  victim, "--vector-size", str(SIZE), "--seed", str(seed),
                                                  "--chunks", str(1 + seed * 3)], stall_log)
        with stopping(stalled):
            wait_for(lambda: admin.status(job_id).participants == 3, 30, what="three members")
            admin.start(job_id)
            for p in people.values():
                train_round(p, 1)
            wait_for(lambda: "STALLED" in stall_log.read_text(), 30, what="upload to stall mid-stream")
            stalled.send_signal(signal.SIGKILL)
            stalled.wait(10)
        status = wait_for(lambda: (s := admin.status(job_id)).state == "done" and s, 30, what="round at deadline")
        v1 = exported(admin, job_id, 1, tmp_path / "v1.safetensors")
        counts = {p.participant_id: p.updates_accepted for p in admin.participants(job_id)}
        admin.close()
    finally:
        assert coordinator.stop() == 0
    (only,) = status.rounds
    assert (only.state, only.attempt, only.reported, only.metrics["updates"]) == ("done", 1, (), 2.0)
    assert counts == {**{n: 1 for n in others}, victim: 0}
    weights = [synthetic_examples(n) for n in others]
    deltas = [synthetic_delta(seed, n, 1, SIZE) for n in others]
    v0 = synthetic_initial(seed, SIZE)  # provided by the first member to join
    np.testing.assert_allclose(v1, v0 + sum(w * d for w, d in zip(weights, deltas)) / sum(weights), atol=1e-6)
