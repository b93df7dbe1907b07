"""The coordinator's domain facade: every job's runtime, found by id or name, behind plain method calls.

gRPC servicers and the in-process simulation both drive this object; it never imports grpc.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import structlog

from fedprompt.config import JobConfig, dump_toml, parse_toml
from fedprompt.coordinator.aggregation import job_aggregator
from fedprompt.coordinator.cohorts import CohortPlan
from fedprompt.coordinator.offload import Offload, inline
from fedprompt.coordinator.runtime import JobRuntime
from fedprompt.coordinator.store import TERMINAL, JobState, Store
from fedprompt.coordinator.views import participant_views
from fedprompt.errors import ConfigError, InvalidRequest, NotFound
from fedprompt.protocol import JobView, ParticipantView

log = structlog.get_logger("coordinator.jobs")

MAX_REF = 200


class JobManager:
    """Creates jobs from validated TOML and routes each call to the job's round state machine."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time, offline_after_s: float = 120.0,
                 offload: Offload = inline) -> None:
        self.store = store
        self.clock = clock
        self.offline_after_s = offline_after_s
        self.offload = offload
        self.jobs: dict[str, JobRuntime] = {}

    def create_job(self, config_toml: str) -> str:
        """Validate a job config (naming any bad key) and register the job; returns its id."""
        config = parse_toml(config_toml, JobConfig, "job config")
        if not config.job.allowed_participants:
            raise ConfigError('job.allowed_participants: empty admits nobody; list the participant identities that '
                              'may join (e.g. ["participant:hospital-a"]) or ["*"] for any certified participant')
        job_aggregator(config)
        CohortPlan.check(config.levels)
        job_id = f"{config.job.name}-{uuid.uuid4().hex[:8]}"
        canonical = dump_toml(config)
        self.store.add_job(job_id, config.job.name, canonical, JobState.CREATED.value)
        self.jobs[job_id] = JobRuntime(job_id, config, canonical, self.store, self.clock, self.offline_after_s,
                                       offload=self.offload)
        log.info("job created", job_id=job_id, rounds=config.job.rounds, aggregator=config.job.aggregator)
        return job_id

    def job(self, ref: str) -> JobRuntime:
        """A job by id, or by name (the newest job of that name that has not ended, else the newest)."""
        if not 0 < len(ref) <= MAX_REF:
            raise InvalidRequest(f"a job id or name has 1-{MAX_REF} characters, got {len(ref)}")
        if ref in self.jobs:
            return self.jobs[ref]
        named = [j for j in self.jobs.values() if j.config.job.name == ref]
        live = [j for j in named if j.state not in TERMINAL]
        chosen = (live or named)[-1:] if named else []
        if not chosen:
            raise NotFound(f"no job with id or name {ref[:80]!r}")
        return chosen[0]

    def expel(self, participant_id: str, why: str) -> None:
        """Remove a participant from every job (its certificate was revoked), discarding in-flight updates."""
        for job in self.jobs.values():
            job.expel(participant_id, why)

    def tick(self) -> None:
        for job in self.jobs.values():
            job.tick()

    def views(self) -> list[JobView]:
        return [j.view() for j in self.jobs.values()]

    def participants(self, job_ref: str = "") -> list[ParticipantView]:
        jobs = [self.job(job_ref)] if job_ref else list(self.jobs.values())
        return [view for job in jobs for view in participant_views(job)]
