"""Participant liveness: who has gone silent, logged once per transition.

A member is online while its last call (any RPC, heartbeats included) is at most ``offline_after_s`` old;
``JobRuntime.online()`` applies that rule when it selects a round, so silent members are skipped without
any extra state.  This watch only turns the rule's changes into structured log lines for operators, one job at
a time (``JobManager.each``).
"""

from __future__ import annotations

import structlog

from fedprompt.coordinator.jobs import JobManager
from fedprompt.coordinator.runtime import JobRuntime
from fedprompt.coordinator.store import TERMINAL

log = structlog.get_logger("coordinator.liveness")


class LivenessWatch:
    def __init__(self) -> None:
        self._online: dict[str, set[str]] = {}

    def sweep(self, jobs: JobManager) -> None:
        """Log ``participant offline`` / ``participant online`` for every change since the last sweep."""
        jobs.each("liveness", self._sweep)

    def _sweep(self, job: JobRuntime) -> None:
        if job.state in TERMINAL:
            self._online.pop(job.job_id, None)
            return
        now_online = set(job.online())
        before = self._online.get(job.job_id, set())
        for participant in sorted(before - now_online):
            member = job.roster.members.get(participant)
            silent = job.clock() - member.last_seen if member else 0.0
            log.warning("participant offline", job_id=job.job_id, participant=participant, silent_s=round(silent, 1))
        for participant in sorted(now_online - before):
            log.info("participant online", job_id=job.job_id, participant=participant)
        self._online[job.job_id] = now_online
