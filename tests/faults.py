"""Fault-injection support: a coordinator process that can be SIGKILLed and restarted where participants
expect it, real participant daemons, and scripted participants stepped by the test (the stalling uploader is
``tests.stall``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fedprompt.app.admin_client import AdminClient, load_prompt
from fedprompt.app.local_link import LocalLink
from fedprompt.app.synthetic import SyntheticParticipant
from fedprompt.coordinator.jobs import JobManager
from fedprompt.coordinator.store import Store
from fedprompt.participant.grpc_link import GrpcLink
from fedprompt.protocol import TaskKind
from tests.support import REPO, fedprompt_process, wait_for


class CoordinatorProcess:
    """``fedprompt coordinator serve`` on a fixed port and state directory; each start logs to its own file."""

    def __init__(self, workdir: Path, port: int, *settings: str) -> None:
        self.workdir = workdir
        self.port = port
        self.settings = settings
        self.starts = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> CoordinatorProcess:
        return self.launch().listening()

    def launch(self) -> CoordinatorProcess:
        """Start the process without waiting for it to listen (a standby replica listens once it is active)."""
        self.starts += 1
        self.workdir.mkdir(parents=True, exist_ok=True)
        sets = [arg for s in self.settings for arg in ("--set", s)]
        self.proc = fedprompt_process(["coordinator", "serve", "--insecure", "--listen", self.target, "--state-dir",
                                       str(self.workdir / "coordinator-state"), "--port-file", str(self._port_file),
                                       "--set", "coordinator.tick_s=0.05", *sets],
                                      self.workdir / f"coordinator-{self.starts}.log")
        return self

    @property
    def _port_file(self) -> Path:
        return self.workdir / f"port-{self.starts}"

    def listening(self, timeout: float = 60) -> CoordinatorProcess:
        assert self.proc is not None
        wait_for(lambda: self._port_file.exists() or self.proc.poll() is not None, timeout, what="coordinator to listen")
        assert self.proc.poll() is None, self.log(self.starts)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.terminate()
        return self.proc.wait(30)

    def log(self, start: int) -> str:
        return (self.workdir / f"coordinator-{start}.log").read_text(errors="replace")


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
    prompt = jobs.store.prompt(job.job_id, rounds)
    assert prompt is not None
    encoding, data = prompt
    return np.frombuffer(data, dtype="<f4")


def exported(admin: AdminClient, job_id: str, version: int, out: Path) -> np.ndarray:
    return load_prompt(admin.export(job_id, out, version))[0]


def daemon(target: str, job_id: str, name: str, data: Path, state: Path, log: Path) -> subprocess.Popen[bytes]:
    """A real participant daemon (tiny model) that retries fast and beats every half second."""
    return fedprompt_process(["participant", "run", "--insecure", "--coordinator", target, "--job", job_id, "--name", name,
                              "--data-dir", str(data), "--state-dir", str(state), "--no-progress",
                              "--set", "participant.retry_max_s=2.0", "--set", "participant.heartbeat_s=0.5"], log)


def module_process(module: str, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """``python -m MODULE ARGS`` importing this checkout, output to ``log``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", module, *args], stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            env=env, cwd=REPO)


def train_round(participant: SyntheticParticipant, round_: int, timeout: float = 30.0) -> None:
    """Step a scripted participant (evaluating what it is asked to) until it has submitted ``round_``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = participant.step(1.0)
        if task.kind is TaskKind.TRAIN and task.round == round_:
            return
        if task.kind is TaskKind.DONE or (task.kind is TaskKind.TRAIN and task.round > round_):
            raise AssertionError(f"{participant.name} got {task} while waiting to train round {round_}")
    raise AssertionError(f"{participant.name} was not asked to train round {round_} within {timeout} s")
