"""Fault injection with real processes and SIGKILL, each scenario over several seeds.

- the coordinator is killed while a round is collecting, restarted on the same state (a SQLite file, or a
  PostgreSQL database once): the round restarts cleanly, the job completes with the prompt an uninterrupted
  run reaches from the same updates;
- a participant is killed in the middle of an upload stream: the round completes with the others and the
  partial upload counts for nothing;
- a participant daemon is killed after submitting and restarted: it rejoins and works on the next round,
  and no update is counted twice;
- the coordinator is unreachable for 30 s: participant processes (a real daemon and a synthetic one)
  reconnect by themselves and finish the job;
- the coordinator of an encrypted job and one of its daemons are killed after a round and restarted: the
  relay comes back from the store, the daemon rejoins as the same key holder from its state directory,
  nobody deals again, and the job (which needs all three) finishes with every site decrypting one prompt.
"""

from __future__ import annotations

import dataclasses
import random
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fedprompt.app.admin_client import AdminClient
from fedprompt.app.bench.pgserver import free_port
from fedprompt.app.synthetic import SyntheticParticipant, synthetic_delta, synthetic_examples, synthetic_initial
from fedprompt.config import HESection, dump_toml
from fedprompt.coordinator.checkpoint import read_checkpoint
from fedprompt.coordinator.store import Store
from fedprompt.data.shards import SiteData
from fedprompt.models import build_classifier
from fedprompt.participant.grpc_link import GrpcLink
from fedprompt.wire.payload import decode_vector
from tests.faults import (
    NAMES,
    SIZE,
    CoordinatorProcess,
    daemon,
    exported,
    module_process,
    scripted,
    train_round,
    uninterrupted_final,
)
from tests.support import stopping, tiny_job, toy_sites, wait_for, write_site

pytestmark = pytest.mark.slow

@pytest.mark.parametrize(("seed", "store"), [(0, "sqlite"), (1, "sqlite"), (2, "sqlite"), (0, "postgresql")])
def test_coordinator_killed_while_collecting_resumes_and_ends_as_uninterrupted(tmp_path: Path, seed: int, store: str,
                                                                               request: pytest.FixtureRequest) -> None:
    rng = random.Random(seed)
    rounds, crash_round = 3, rng.randint(1, 3)
    reporters = sorted(rng.sample(NAMES, rng.randint(1, 2)))  # updates in memory when the coordinator dies
    config_toml = dump_toml(tiny_job(tmp_path, rounds=rounds, participants_per_round=3, min_participants=3,
                                     round_deadline_s=60.0, seed=seed))
    on_postgres = [f"coordinator.store={request.getfixturevalue('postgres_url')}"] if store == "postgresql" else []
    coordinator = CoordinatorProcess(tmp_path, free_port(), *on_postgres).start()
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
    assert (tmp_path / "coordinator-state" / "coordinator.sqlite").exists() == (store == "sqlite")
    assert Store(on_postgres[0].partition("=")[2] if on_postgres else
                 str(tmp_path / "coordinator-state" / "coordinator.sqlite")).latest_version(job_id) == rounds


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


def replay(v0: np.ndarray, rounds: int, updates: dict[str, tuple[int, list[np.ndarray]]]) -> np.ndarray:
    """The global after ``rounds`` rounds of FedAvg over exactly one update per participant per round."""
    vector = v0.astype(np.float32)
    total = sum(w for w, _ in updates.values())
    for r in range(rounds):
        mean = sum(w * deltas[r].astype(np.float64) for w, deltas in updates.values()) / total
        vector = (vector.astype(np.float64) + mean).astype(np.float32)
    return vector


def initial_prompt(workdir: Path, job_id: str) -> np.ndarray:
    """Global version 0 as stored by the coordinator (admin export treats version 0 as "latest")."""
    prompt = Store(workdir / "coordinator-state" / "coordinator.sqlite").prompt(job_id, 0)
    assert prompt is not None
    _, data = prompt
    return np.frombuffer(data, "<f4")


def audit_trail(state: Path, rounds: int) -> list[np.ndarray]:
    return [np.load(state / "updates" / f"round-{r:04d}.npy") for r in range(1, rounds + 1)]


@pytest.mark.parametrize("seed", [0, 1])
def test_participant_daemon_restarted_rejoins_without_double_counting(tmp_path: Path, tiny_encoder_dir: Path,
                                                                       seed: int) -> None:
    rounds, kill_round = 3, 1 + seed
    coordinator = CoordinatorProcess(tmp_path, free_port()).start()
    site = toy_sites(1, train=12, seed=seed)[0]
    data = write_site(site, tmp_path / "data")
    try:
        admin = AdminClient(coordinator.target)
        job_id = admin.create_job(dump_toml(tiny_job(tiny_encoder_dir, rounds=rounds, participants_per_round=3,
                                                     min_participants=3, round_deadline_s=120.0, seed=seed)))
        first = daemon(coordinator.target, job_id, "c", data, tmp_path / "c-state", tmp_path / "c-1.log")
        second = None
        with stopping(first):
            wait_for(lambda: admin.status(job_id).participants == 1, 120, what="daemon to join")
            size = admin.status(job_id).vector_size
            people = {n: SyntheticParticipant(GrpcLink(coordinator.target, n), n, job_id, size, seed) for n in "ab"}
            for p in people.values():
                p.join()
            admin.start(job_id)
            for round_ in range(1, rounds + 1):
                train_round(people["a"], round_, timeout=60)
                if round_ == kill_round:
                    wait_for(lambda: "c" in admin.status(job_id).rounds[-1].reported, 60, what="c's update")
                    first.send_signal(signal.SIGKILL)
                    first.wait(10)
                    second = daemon(coordinator.target, job_id, "c", data, tmp_path / "c-state", tmp_path / "c-2.log")
                    wait_for(lambda: len(re.findall(r"participant joined.*participant=c\b", coordinator.log(1))) == 2,
                             120, what="restarted daemon to rejoin")
                train_round(people["b"], round_, timeout=60)
            assert second is not None
            with stopping(second):
                assert second.wait(120) == 0, (tmp_path / "c-2.log").read_text()[-3000:]
        status = admin.status(job_id)
        final = exported(admin, job_id, rounds, tmp_path / "final.safetensors")
        counts = {p.participant_id: p.updates_accepted for p in admin.participants(job_id)}
        admin.close()
    finally:
        assert coordinator.stop() == 0
    assert first.returncode == -signal.SIGKILL and status.state == "done"
    assert counts == {"a": rounds, "b": rounds, "c": rounds}
    assert [(r.round, r.attempt, r.metrics["updates"]) for r in status.rounds] == [(r, 1, 3.0) for r in (1, 2, 3)]
    restarted_log = (tmp_path / "c-2.log").read_text()
    assert not re.search(rf"update submitted.*\bround={kill_round}\b", restarted_log)  # no second update
    assert re.search(rf"update submitted.*\bround={kill_round + 1}\b", restarted_log)  # works on the next round
    updates = {n: (p.num_examples, [synthetic_delta(seed, n, r, size) for r in range(1, rounds + 1)])
               for n, p in people.items()}
    updates["c"] = (len(site.train), audit_trail(tmp_path / "c-state", rounds))
    np.testing.assert_allclose(final, replay(initial_prompt(tmp_path, job_id), rounds, updates), rtol=0, atol=1e-6)


@dataclass
class Outage:
    """One seed of the outage scenario: its coordinator, job, a real daemon and a synthetic participant process."""

    seed: int
    workdir: Path
    coordinator: CoordinatorProcess
    admin: AdminClient
    job_id: str
    site: SiteData
    participants: list[subprocess.Popen[bytes]]

    def rounds_done(self) -> int:
        return sum(r.state == "done" for r in self.admin.status(self.job_id).rounds)

    def joined(self) -> bool:
        return self.admin.status(self.job_id).participants == len(self.participants)


def outage(seed: int, workdir: Path, model_dir: Path, rounds: int, vector_size: int) -> Outage:
    workdir.mkdir()
    coordinator = CoordinatorProcess(workdir, free_port()).start()
    admin = AdminClient(coordinator.target)
    job_id = admin.create_job(dump_toml(tiny_job(model_dir, rounds=rounds, participants_per_round=2,
                                                 min_participants=2, seed=seed)))
    site = toy_sites(1, train=12, seed=seed)[0]
    real = daemon(coordinator.target, job_id, "site", write_site(site, workdir / "data"), workdir / "state",
                  workdir / "site.log")
    synthetic = module_process("fedprompt.app.synthetic", ["--coordinator", coordinator.target, "--job", job_id,
                                                         "--prefix", "synthetic", "--vector-size", str(vector_size),
                                                         "--seed", str(seed)], workdir / "synthetic.log")
    return Outage(seed, workdir, coordinator, admin, job_id, site, [real, synthetic])


def test_coordinator_unreachable_30s_participants_reconnect_by_themselves(tmp_path: Path, tiny_encoder_dir: Path) -> None:
    """Three seeds side by side (they spend most of the time waiting): the coordinator is SIGKILLed once
    ``seed`` rounds are done and comes back on the same address and state 30 s later."""
    rounds, outage_s = 6, 30.0  # enough rounds that the job cannot finish between a poll and the kill
    size = build_classifier(tiny_job(tiny_encoder_dir)).vector_size
    runs = [outage(seed, tmp_path / f"seed-{seed}", tiny_encoder_dir, rounds, size) for seed in (0, 1, 2)]
    everything = [p for run in runs for p in run.participants]
    try:
        with stopping(*everything):
            for run in runs:
                wait_for(run.joined, 180, what="participants to join")
            killed_at = []
            for run in runs:
                run.admin.start(run.job_id)
                wait_for(lambda r=run: r.rounds_done() >= r.seed, 120, interval=0.05, what="rounds before the kill")
                run.coordinator.kill()
                killed_at.append(time.monotonic())
            for run, t in zip(runs, killed_at):
                time.sleep(max(0.0, t + outage_s - time.monotonic()))
                assert all(p.poll() is None for p in run.participants), "a participant gave up during the outage"
                run.coordinator.start()
            for p in everything:
                assert p.wait(180) == 0
        for run in runs:
            status = run.admin.status(run.job_id)
            final = exported(run.admin, run.job_id, rounds, run.workdir / "final.safetensors")
            run.admin.close()
            assert run.coordinator.stop() == 0
            assert status.state == "done" and "job resumed" in run.coordinator.log(2)
            assert "coordinator reachable again" in (run.workdir / "site.log").read_text()
            updates = {"site": (len(run.site.train), audit_trail(run.workdir / "state", rounds)),
                       "synthetic-0000": (synthetic_examples("synthetic-0000"),
                                          [synthetic_delta(run.seed, "synthetic-0000", r, size)
                                           for r in range(1, rounds + 1)])}
            np.testing.assert_allclose(final, replay(initial_prompt(run.workdir, run.job_id), rounds, updates), atol=1e-6)
    finally:
        for run in runs:
            run.coordinator.stop()


def test_encrypted_job_survives_a_coordinator_and_a_daemon_kill(tmp_path: Path, tiny_encoder_dir: Path) -> None:
    rounds = 3
    config = dataclasses.replace(tiny_job(tiny_encoder_dir, rounds=rounds, participants_per_round=3,
                                          min_participants=3, round_deadline_s=120.0), he=HESection(enabled=True, mode="single_key"))
    coordinator = CoordinatorProcess(tmp_path, free_port()).start()
    try:
        admin = AdminClient(coordinator.target)
        job_id = admin.create_job(dump_toml(config))
        sites = [write_site(s, tmp_path / f"data-{k}") for k, s in enumerate(toy_sites(3))]
        procs = [daemon(coordinator.target, job_id, f"site-{k}", site, tmp_path / f"state-{k}", tmp_path / f"site-{k}.log")
                 for k, site in enumerate(sites)]
        with stopping(*procs):
            wait_for(lambda: admin.status(job_id).participants == 3, 120, what="daemons to join")
            admin.start(job_id)
            wait_for(lambda: any(r.round == 1 and r.state == "done" for r in admin.status(job_id).rounds), 180,
                     what="round 1 aggregated")
            procs[2].send_signal(signal.SIGKILL)
            coordinator.kill()
            procs[2].wait(10)
            coordinator.start()
            procs.append(daemon(coordinator.target, job_id, "site-2", sites[2], tmp_path / "state-2",
                                tmp_path / "site-2-restarted.log"))
            with stopping(procs[3]):
                status = wait_for(lambda: (s := admin.status(job_id)).state == "done" and s, 300, interval=0.5,
                                  what="job done after the restarts")
                for proc in (*procs[:2], procs[3]):
                    assert proc.wait(60) == 0
        admin.close()
    finally:
        assert coordinator.stop() == 0, coordinator.log(coordinator.starts)
    restarted = coordinator.log(2)
    assert "key relay restored" in restarted and "context=True" in restarted and "holders=3" in restarted
    assert "public context published" not in restarted  # nobody dealt again
    assert [r.round for r in status.rounds if r.state == "done"] == [1, 2, 3]
    assert all(r.metrics["updates"] == 3.0 for r in status.rounds if r.state == "done")
    assert "job keys loaded from the state directory" in (tmp_path / "site-2-restarted.log").read_text()
    finals = [np.load(tmp_path / f"state-{k}" / "globals" / f"version-{rounds:04d}.npy") for k in range(3)]
    assert all(np.array_equal(finals[0], f) for f in finals[1:])  # every key holder decrypted the same prompt
