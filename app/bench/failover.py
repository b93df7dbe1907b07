"""Failover: a real job over PostgreSQL with two coordinator processes (replicas ``a`` and ``b``, one lease) and
three participant processes; the active coordinator is SIGKILLed mid-round, and the standby must take over,
rebuild the job as a restart does and finish it, losing nothing and aggregating no round twice.

Each trial gets a fresh database on one PostgreSQL server the bench starts from Debian's package
(``app.bench.pgserver``, the test fixture's server too).  The participants are ``app.synthetic`` clients, one
process each, given both replicas' addresses (``--coordinator A,B``): their links move to the other address when
one is UNAVAILABLE (``participant.grpc_link``).  Each update takes ``TRAIN_S`` seconds to make, so a round lasts
long enough to be killed in: the bench waits until half the rounds are done and a round is collecting, then
sends SIGKILL to the active replica.

Figures, per trial:

- ``takeover_s``: from the SIGKILL to the standby answering the gRPC health check SERVING, i.e. holding the lease,
  its jobs rebuilt from the store, serving calls.  It is bounded by the lease's time to live (``lease_ttl_s``: the
  killed replica renewed it at most a third of it before) plus the standby's poll (a third of it) and its start.
- ``round_resumed_s``: from the SIGKILL to the next global version aggregated on the standby (the interrupted
  round, restarted: participants found the standby and uploaded again).
- ``lost_versions``: global versions the killed replica had committed (read from the database right after the
  kill, and those its status showed before) that the final database lacks or holds with other bytes.
- ``duplicate_aggregations``: rounds with more than one completed attempt, plus completed rounds that counted
  more updates than participants.
- ``completed_jobs``: trials whose job reached ``done`` with every participant process exiting 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedprompt.app.admin_client import AdminClient
from fedprompt.app.bench import pgserver
from fedprompt.app.bench.load import start_python
from fedprompt.app.bench.smoke import run_size
from fedprompt.app.demo import wait_for_port
from fedprompt.app.report import fmt, table, write_json
from fedprompt.config import JobConfig, JobSection, dump_toml
from fedprompt.coordinator.store import Store
from fedprompt.errors import FedPromptError

VECTOR_SIZE = 16 * 384  # a 16-token prompt on MiniLM (hidden size 384)
PARTICIPANTS = 3
TRAIN_S = 0.5  # seconds each synthetic update takes: a round lasts about this long
TICK_S = 0.1


@dataclass(frozen=True)
class FailoverSize:
    """Trials, rounds per job and the lease's time to live (``--trials``, ``--rounds``)."""

    trials: int
    rounds: int
    lease_ttl_s: float


FULL = FailoverSize(trials=5, rounds=8, lease_ttl_s=10.0)  # 10 s: the README's advice for a replica pair
SMOKE = FailoverSize(trials=1, rounds=3, lease_ttl_s=2.0)


def serving(target: str) -> bool:
    """Whether ``target``'s gRPC health service answers SERVING (not listening, or NOT_SERVING: False)."""
    with grpc.insecure_channel(target) as channel:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0).status
        except grpc.RpcError:
            return False
    return bool(status == health_pb2.HealthCheckResponse.SERVING)


def wait(condition: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise FedPromptError(f"failover bench: no {what} within {timeout:.0f} s")
        time.sleep(step)


class Replica:
    """One coordinator process on the shared database, on a fixed port (a standby listens once active)."""

    def __init__(self, name: str, url: str, ttl_s: float, workdir: Path) -> None:
        self.name = name
        self.port = pgserver.free_port()
        self.log = workdir / f"coordinator-{name}.log"
        self.port_file = workdir / f"port-{name}"
        self.proc = start_python(["-m", "fedprompt", "--log-level", "info", "coordinator", "serve", "--insecure",
                                  "--listen", self.target, "--state-dir", str(workdir / f"state-{name}"),
                                  "--port-file", str(self.port_file), "--store", url, "--lease-ttl-s", str(ttl_s),
                                  "--replica", name, "--set", f"coordinator.tick_s={TICK_S}"], self.log)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def said(self, text: str) -> bool:
        return text in self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def committed(store: Store, job_id: str) -> dict[int, str]:
    """Every global version in the store, with the SHA-256 of its bytes."""
    versions: dict[int, str] = {}
    for version in range(1, (store.latest_version(job_id) or 0) + 1):
        prompt = store.prompt(job_id, version)
        if prompt is not None:
            versions[version] = hashlib.sha256(prompt[1]).hexdigest()
    return versions


@dataclass(frozen=True)
class Trial:
    """One trial's figures (see the module docstring) and what explains them."""

    takeover_s: float
    round_resumed_s: float
    killed_after_versions: list[int]
    lost_versions: list[int]
    duplicate_aggregations: int
    completed: bool
    job_state: str
    participant_exits: list[int]
    attempts: list[tuple[int, int, str]]  # (round, attempt, state) in the final store
    standby_took_lease: bool


def run_trial(server: pgserver.PostgresServer, size: FailoverSize, workdir: Path, seed: int) -> Trial:
    """One job, one SIGKILL of the active replica mid-round; the trial's figures (see the module docstring)."""
    url = server.database()
    a = Replica("a", url, size.lease_ttl_s, workdir)
    b: Replica | None = None
    clients: list[subprocess.Popen[bytes]] = []
    try:
        wait_for_port(a.port_file, a.proc)
        b = Replica("b", url, size.lease_ttl_s, workdir)
        wait(lambda: b is not None and b.said("standing by"), 60, "standby")
        admin = AdminClient(a.target)
        job = JobConfig(job=JobSection(name="failover", rounds=size.rounds, participants_per_round=PARTICIPANTS,
                                       min_participants=PARTICIPANTS, round_deadline_s=120.0, seed=seed,
                                       allowed_participants=("*",)))
        job_id = admin.create_job(dump_toml(job))
        for k in range(PARTICIPANTS):
            clients.append(start_python(["-m", "fedprompt.app.synthetic", "--coordinator", f"{a.target},{b.target}",
                                         "--job", job_id, "--prefix", "site", "--first", str(k), "--count", "1",
                                         "--vector-size", str(VECTOR_SIZE), "--seed", str(seed), "--train-s",
                                         str(TRAIN_S), "--give-up-after", "300"], workdir / f"participant-{k}.log"))
        wait(lambda: admin.status(job_id).participants == PARTICIPANTS, 120, "participants joined", 0.2)
        admin.start(job_id)
        kill_after = size.rounds // 2

        def mid_round() -> bool:
            rounds = admin.status(job_id).rounds
            done = sum(r.state == "done" for r in rounds)
            return done >= kill_after and bool(rounds) and rounds[-1].state == "training"

        wait(mid_round, 300, f"round collecting after {kill_after} done rounds")
        shown = {r.round for r in admin.status(job_id).rounds if r.state == "done"}
        admin.close()
        a.proc.kill()  # SIGKILL: no lease release, no last checkpoint, its round's partial sum gone
        killed = time.monotonic()
        a.proc.wait(10)
        store = Store(url)
        before = committed(store, job_id)  # everything the killed replica had committed
        wait(lambda: serving(b.target), 300, "standby serving")
        takeover = time.monotonic() - killed
        admin = AdminClient(b.target)
        last = max(before, default=0)
        wait(lambda: any(r.state == "done" and r.round > last for r in admin.status(job_id).rounds), 300,
             "round aggregated by the standby", 0.1)
        resumed = time.monotonic() - killed
        exits = []
        for client in clients:
            try:
                exits.append(client.wait(300))
            except subprocess.TimeoutExpired:
                client.kill()
                exits.append(client.wait(10))
        status = admin.status(job_id)
        admin.close()
        after = committed(store, job_id)
        rounds = store.rounds(job_id)
        store.close()
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
        for replica in (a, b):
            if replica is not None:
                replica.stop()
    lost = sorted(v for v in set(before) | shown if v not in after or (v in before and after[v] != before[v]))
    done = [r for r in rounds if r.state == "done"]
    twice = len(done) - len({r.round for r in done})
    overcounted = sum(r.summary.get("updates", 0.0) > PARTICIPANTS for r in done)
    server.drop(url)
    return Trial(takeover_s=round(takeover, 2), round_resumed_s=round(resumed, 2),
                 killed_after_versions=sorted(before), lost_versions=lost, duplicate_aggregations=twice + overcounted,
                 completed=status.state == "done" and not any(exits) and len(after) == size.rounds,
                 job_state=status.state, participant_exits=exits,
                 attempts=[(r.round, r.attempt, r.state) for r in rounds],
                 standby_took_lease=b is not None and b.said("lease taken: this replica is active"))


def main(args: argparse.Namespace) -> int:
    size = run_size(args, FULL, SMOKE, "trials", "rounds")
    server = pgserver.start()
    if isinstance(server, str):
        raise FedPromptError(f"bench failover needs a PostgreSQL server: {server}")
    trials = []
    try:
        for trial in range(size.trials):
            with tempfile.TemporaryDirectory(prefix="fedprompt-failover-") as tmp:
                trials.append(run_trial(server, size, Path(tmp), args.seed + trial))
    finally:
        server.stop()
    takeovers = [t.takeover_s for t in trials]
    resumed = [t.round_resumed_s for t in trials]
    lost = sum(len(t.lost_versions) for t in trials)
    duplicates = sum(t.duplicate_aggregations for t in trials)
    completed = sum(t.completed for t in trials)
    median = statistics.median(takeovers)
    report = {
        "trials": len(trials), "takeover_s": takeovers, "median_takeover_s": median, "round_resumed_s": resumed,
        "lost_versions": lost, "duplicate_aggregations": duplicates, "completed_jobs": completed,
        "per_trial": [dataclasses.asdict(t) for t in trials],
        "targets": {"lost_versions": 0, "duplicate_aggregations": 0, "median_takeover_s_max": 30.0},
        "settings": {"rounds": size.rounds, "participant_processes": PARTICIPANTS, "coordinator_processes": 2,
                     "lease_ttl_s": size.lease_ttl_s, "train_s": TRAIN_S, "tick_s": TICK_S,
                     "vector_size": VECTOR_SIZE, "store": "postgresql",
                     "takeover": "SIGKILL of the active replica -> the standby's gRPC health answers SERVING"},
        "smoke": bool(args.smoke),
    }
    print(table(["trials", "takeover_s", "median_takeover_s", "round_resumed_s", "lost_versions",
                 "duplicate_aggregations", "completed_jobs"],
                [[len(trials), " ".join(fmt(t, 2) for t in takeovers), fmt(median, 2),
                  " ".join(fmt(t, 2) for t in resumed), lost, duplicates, completed]]))
    write_json(report, args.report or "reports/bench-failover.json")
    return 0 if lost == 0 and duplicates == 0 and completed == len(trials) and median <= 30.0 else 1
