"""Load: one real coordinator process serving N concurrent participants over real gRPC for several rounds.

The participants are ``participant.synthetic`` clients (no model: prompt-sized deterministic deltas; a
thread each, their calls over one ``grpc.aio`` channel per process) spread over a few client processes.
Every participant is selected every round and the round closes when all have reported, so a round's time
(coordinator clock, opened -> aggregated) covers N downloads of the global, N metric reports and N uploads,
and ``seconds_per_participant`` (the p50 round over N) stays flat while a round's cost grows linearly with N.
The coordinator's resident memory is sampled throughout; ``errors`` counts client failures, failed round
attempts and non-zero exits, and must be 0.

The coordinator runs with its defaults (rate and upload limits included) but a 0.1 s tick and, past 1,000
participants, ``max_pending_calls`` raised to N (a round opening sends every member's next call at once,
which gRPC's default queue cancels beyond 3,000 calls); the job's round deadline, the clients' patience with
a busy coordinator and the bench's own time limit grow with N, so that 10,000 participants have time to join
and report.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from fedprompt.app.admin_client import AdminClient
from fedprompt.app.bench.smoke import run_size
from fedprompt.app.demo import wait_for_port
from fedprompt.app.report import fmt, table, write_json
from fedprompt.config import JobConfig, JobSection, dump_toml

VECTOR_SIZE = 16 * 384  # a 16-token prompt on MiniLM (hidden size 384)


@dataclass(frozen=True)
class LoadSize:
    """How many participants, rounds and client processes (``--participants``, ``--rounds``, ``--clients``)."""

    participants: int
    rounds: int
    clients: int


FULL = LoadSize(participants=200, rounds=5, clients=4)
#: ``--smoke``: still several client processes, so the participants are spread as in the full run.
SMOKE = LoadSize(participants=4, rounds=1, clients=2)


def start_python(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """``python ARGS`` on one BLAS thread, its stdout piped (a client's summary) and its stderr (logs) to ``log``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=log.open("wb"), env=env)


def run_load(participants: int, rounds: int, clients: int, workdir: Path, seed: int = 0) -> dict[str, object]:
    """Run the load test in ``workdir`` and return the report (the issue's keys plus ``settings``)."""
    port_file = workdir / "port"
    coordinator = start_python(["-m", "fedprompt", "--log-level", "warning", "coordinator", "serve", "--insecure",
                          "--listen", "127.0.0.1:0", "--state-dir", str(workdir / "state"), "--port-file",
                          str(port_file), "--set", "coordinator.tick_s=0.1", "--set",
                          f"coordinator.max_pending_calls={max(1000, participants)}"], workdir / "coordinator.log")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        target = f"127.0.0.1:{wait_for_port(port_file, coordinator)}"
        monitor = psutil.Process(coordinator.pid)
        admin = AdminClient(target)
        job = JobConfig(job=JobSection(name="load", rounds=rounds, participants_per_round=participants,
                                       min_participants=max(1, participants // 2),
                                       round_deadline_s=max(300.0, 0.1 * participants),
                                       seed=seed, allowed_participants=("*",)))
        job_id = admin.create_job(dump_toml(job))
        share = -(-participants // clients)
        for k in range(clients):
            first, count = k * share, min(share, participants - k * share)
            if count > 0:
                procs.append(start_python(["-m", "fedprompt.app.synthetic", "--coordinator", target, "--job", job_id,
                                     "--prefix", "load", "--first", str(first), "--count", str(count),
                                     "--vector-size", str(VECTOR_SIZE), "--seed", str(seed),
                                     "--give-up-after", str(max(120.0, 0.03 * participants))],
                                    workdir / f"client-{k}.log"))
        peak = 0.0
        deadline = time.monotonic() + 600 + 0.05 * participants * rounds
        while admin.status(job_id).participants < participants:  # once a second: a status reads every report
            for _ in range(5):
                peak = max(peak, monitor.memory_info().rss)
                time.sleep(0.2)
            if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
                raise RuntimeError("participants did not all join")
        admin.start(job_id)
        began = time.perf_counter()
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            peak = max(peak, monitor.memory_info().rss)
            time.sleep(0.2)
        wall = time.perf_counter() - began
        client_errors: list[str] = []
        for p in procs:
            if p.poll() is None:
                p.kill()
            out = (p.communicate()[0] or b"").decode().strip().splitlines()
            summary = json.loads(out[-1]) if out else {"errors": [f"client exited {p.returncode} without a summary"]}
            client_errors += summary["errors"] + ([f"client exit code {p.returncode}"] if p.returncode else [])
        status = admin.status(job_id)
        admin.close()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        coordinator.terminate()
        coordinator.wait(30)
    done = [r for r in status.rounds if r.state == "done"]
    failed = [r for r in status.rounds if r.state != "done"]
    durations = [r.closed_at - r.opened_at for r in done]
    p50 = float(np.percentile(durations, 50)) if durations else None
    return {
        "participants": participants,
        "rounds_completed": len(done),
        "p50_round_s": p50,
        "p95_round_s": float(np.percentile(durations, 95)) if durations else None,
        "coordinator_peak_rss_mb": round(peak / 2**20, 1),
        "errors": len(client_errors) + len(failed) + (rounds - len(done)),
        "seconds_per_participant": p50 / participants if p50 is not None else None,
        "settings": {"rounds": rounds, "client_processes": len(procs),
                     "round_deadline_s": job.job.round_deadline_s, "vector_size": VECTOR_SIZE,
                     "update_bytes": 4 * VECTOR_SIZE, "job_state": status.state, "wall_s": round(wall, 1),
                     "round_s": [round(d, 3) for d in durations], "error_messages": client_errors[:20]},
    }


def main(args: argparse.Namespace) -> int:
    size = run_size(args, FULL, SMOKE, "participants", "rounds", "clients")
    with tempfile.TemporaryDirectory(prefix="fedprompt-load-") as tmp:
        report = {**run_load(size.participants, size.rounds, size.clients, Path(tmp), args.seed),
                  "smoke": bool(args.smoke)}
    print(table(["participants", "rounds", "p50_round_s", "p95_round_s", "seconds_per_participant", "peak_rss_mb",
                 "errors"],
                [[report["participants"], report["rounds_completed"], report["p50_round_s"], report["p95_round_s"],
                  fmt(report["seconds_per_participant"], 6), report["coordinator_peak_rss_mb"], report["errors"]]]))
    write_json(report, args.report or "reports/bench-load.json")
    return 0 if report["errors"] == 0 else 1
