"""Heartbeats from a background thread, so a participant busy training is not taken for gone.

The coordinator skips members silent for ``offline_after_s`` when it selects a round; long local training
makes no other call, so the daemon beats every ``heartbeat_s`` (keep it well below ``offline_after_s``).
"""

from __future__ import annotations

import threading
from types import TracebackType

import structlog

from fedprompt.errors import FedPromptError
from fedprompt.participant.grpc_link import GrpcLink

log = structlog.get_logger("participant.heartbeat")


class Heartbeat:
    """``with Heartbeat(link, job_id, interval_s):`` beats until the block ends."""

    def __init__(self, link: GrpcLink, job_id: str, interval_s: float) -> None:
        self.link = link
        self.job_id = job_id
        self.interval_s = interval_s
        self.beats = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(self.interval_s + 5)

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self.interval_s):
            try:
                self.link.heartbeat(self.job_id, timeout_s=max(1.0, self.interval_s))
            except FedPromptError as exc:
                if not failing:
                    log.warning("heartbeat not answered", job_id=self.job_id, reason=str(exc))
                failing = True
                continue
            self.beats += 1
            if failing:
                log.info("heartbeat answered again", job_id=self.job_id)
            failing = False
