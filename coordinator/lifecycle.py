"""A job's lifecycle: created, running, paused, and the ends (done, cancelled, failed), with the reason shown
in its status; every change is written through to the store and logged.

Only a created or paused job starts, only a running one pauses, and an ended one never changes again.  The
rounds ask for an end or a pause through ``JobEnd`` (``coordinator.rounds``), recovery through ``end``.
"""

from __future__ import annotations

import structlog

from fedprompt.coordinator.store import TERMINAL, JobState, Store
from fedprompt.errors import JobStateError


class Lifecycle:
    """One job's state and the reason for it."""

    def __init__(self, job_id: str, store: Store, log: structlog.typing.FilteringBoundLogger) -> None:
        self.job_id = job_id
        self.store = store
        self.log = log
        self.state = JobState.CREATED
        self.reason = ""

    def start(self) -> JobState:
        if self.state not in (JobState.CREATED, JobState.PAUSED):
            raise JobStateError(f"job {self.job_id} is {self.state.value}; only created or paused jobs can start")
        self.set(JobState.RUNNING)
        return self.state

    def pause(self) -> JobState:
        if self.state is not JobState.RUNNING:
            raise JobStateError(f"job {self.job_id} is {self.state.value}; only running jobs can pause")
        self.set(JobState.PAUSED, "paused by admin")
        return self.state

    def cancel(self) -> JobState:
        if self.state in TERMINAL:
            raise JobStateError(f"job {self.job_id} is already {self.state.value}")
        self.set(JobState.CANCELLED, "cancelled by admin")
        return self.state

    def end(self, state: JobState, reason: str) -> None:
        """Stop an unfinished job for good (DONE) or for now (PAUSED), with the reason; an ended job stays."""
        if self.state not in TERMINAL:
            self.set(state, reason)

    def set(self, state: JobState, reason: str = "") -> None:
        self.log.info("job state", old=self.state.value, new=state.value, reason=reason)
        self.state, self.reason = state, reason
        self.store.set_job_state(self.job_id, state.value, reason)
