"""Fault-injection support: a coordinator process that can be SIGKILLed and restarted where participants
expect it, real participant daemons, and scripted participants stepped by the test (the stalling uploader is
``tests.stall``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from fedprompt.app.synthetic import SyntheticParticipant
from fedprompt.protocol import TaskKind
from tests.support import REPO, fedprompt_process, wait_for


def free_port() -> int:
    """A port free right now (picked by the kernel), so a restarted coordinator can bind the same one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        self.starts += 1
        port_file = self.workdir / f"port-{self.starts}"
        sets = [arg for s in self.settings for arg in ("--set", s)]
        self.proc = fedprompt_process(["coordinator", "serve", "--insecure", "--listen", self.target, "--state-dir",
                                       str(self.workdir / "coordinator-state"), "--port-file", str(port_file),
                                       "--set", "coordinator.tick_s=0.05", *sets],
                                      self.workdir / f"coordinator-{self.starts}.log")
        wait_for(lambda: port_file.exists() or self.proc.poll() is not None, 60, what="coordinator to listen")
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
