"""The coordinator's domain facade: every job's runtime, found by id or unique name, behind plain method calls.

gRPC servicers and the in-process simulation both drive this object; it never imports grpc.  Job ids are
opaque (``fedprompt.protocol.new_job_id``): a name is whatever text the admin chose, so it never names a file.
The ticker's per-job steps run through ``each``, the one place where a job's failure is kept from the others.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable

import structlog

from fedprompt.config import SIGNED_CONFIG, JobConfig, check_submitted, dump_toml, parse_toml
from fedprompt.coordinator.aggregation import job_aggregator
from fedprompt.coordinator.cohorts import CohortPlan
from fedprompt.coordinator.events import RoundEvents
from fedprompt.coordinator.offload import Offload, inline
from fedprompt.coordinator.runtime import JobRuntime
from fedprompt.coordinator.store import TERMINAL, JobState, Store
from fedprompt.coordinator.views import participant_views
from fedprompt.crypto.attest import Attestation
from fedprompt.errors import AmbiguousName, ConfigError, Deposed, InvalidRequest, NotFound, PreconditionFailed, quoted
from fedprompt.protocol import JobView, ParticipantView, new_job_id

log = structlog.get_logger("coordinator.jobs")

MAX_REF = 200
#: How many of the jobs sharing a name a refusal lists (each id with its state; the status message stays small).
MAX_CANDIDATES = 10
#: How much of an exception's text (which may quote a job's name or a path) a log line or a job's reason holds.
MAX_ERROR = 200


class JobManager:
    """Creates jobs from validated TOML and routes each call to the job's round state machine."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time, offline_after_s: float = 120.0,
                 offload: Offload = inline, events: RoundEvents | None = None) -> None:
        """``events`` hears every job's rounds (``coordinator.events``): the server's metrics, or nothing."""
        self.store = store
        self.events = events or RoundEvents()
        self.clock = clock
        self.offline_after_s = offline_after_s
        self.offload = offload
        self.jobs: dict[str, JobRuntime] = {}
        self._failing: dict[tuple[str, str], str] = {}  # (job id, step) -> the failure already logged and handled
        self._unrecorded: set[str] = set()  # jobs paused in memory whose pause the store refused to record

    def create_job(self, config_toml: str, signature: bytes = b"") -> str:
        """Validate a job config (naming any bad key) and register the job; returns its id.  ``signature``: the
        admin's signed statement of the config (``config.signed``), checked to be about it, kept and relayed."""
        config = parse_toml(config_toml, JobConfig, "job config")
        if signature:
            check_submitted(signature, config)
        if not config.job.allowed_participants:
            raise ConfigError('job.allowed_participants: empty admits nobody; list the participant identities that '
                              'may join (e.g. ["participant:hospital-a"]) or ["*"] for any certified participant')
        job_aggregator(config)
        CohortPlan.check(config.levels)
        job_id = new_job_id()
        while job_id in self.jobs:
            job_id = new_job_id()
        canonical = dump_toml(config)
        self.store.add_job(job_id, config.job.name, canonical, JobState.CREATED.value)
        if signature:
            self.store.save_attestation(job_id, Attestation.from_bytes(signature).identity, SIGNED_CONFIG, signature)
        self.jobs[job_id] = JobRuntime(job_id, config, canonical, self.store, self.clock, self.offline_after_s,
                                       offload=self.offload, events=self.events)
        log.info("job created", job_id=job_id, name=config.job.name[:80], rounds=config.job.rounds,
                 aggregator=config.job.aggregator, signed=bool(signature))
        return job_id

    def job(self, ref: str) -> JobRuntime:
        """A job by id, or by a name that no other job has.  A name several jobs share is refused with their ids:
        choosing one for the caller (the newest, once) let ``admin cancel NAME`` end a job its admin never meant."""
        if not 0 < len(ref) <= MAX_REF:
            raise InvalidRequest(f"a job id or name has 1-{MAX_REF} characters, got {len(ref)}")
        if ref in self.jobs:
            return self.jobs[ref]
        named = [j for j in self.jobs.values() if j.config.job.name == ref]
        if not named:
            raise NotFound(f"no job with id or name {ref[:80]!r}")
        if len(named) > 1:
            newest = [f"{j.job_id} ({j.state.value})" for j in reversed(named)]
            shown = ", ".join(newest[:MAX_CANDIDATES]) + (f" and {len(newest) - MAX_CANDIDATES} more"
                                                          if len(newest) > MAX_CANDIDATES else "")
            raise AmbiguousName(f"{len(named)} jobs are named {quoted(ref)}: {shown} (newest first); name one by "
                                "its id")
        return named[0]

    def refuse_keys(self, job_ref: str, participant_id: str, reason: str) -> None:
        """A member refused the key material relayed to it (an attestation that does not verify,
        ``coordinator.keys.JobKeys.refused``): the job pauses, its status naming who refused what, since a
        relay that swaps or forges keys must not run on.  An admin starts it again once the cause is found."""
        job = self.job(job_ref)
        if job.keys is None:
            raise PreconditionFailed(f"job {job.job_id} is not encrypted (he.enabled is false)")
        job.lifecycle.end(JobState.PAUSED, job.keys.refused(participant_id, reason))

    def expel(self, participant_id: str, why: str) -> None:
        """Remove a participant from every job (its certificate was revoked), discarding in-flight updates; each job
        on its own (``each``): the revocation is reported once, so one job's failure must not spare the others."""
        self.each("expel", lambda job: job.expel(participant_id, why))

    def tick(self) -> None:
        """Time passes for every job (``JobRuntime.tick``: deadlines, settling, opening rounds), each on its own."""
        self.each("rounds", JobRuntime.tick)

    def each(self, step: str, action: Callable[[JobRuntime], None]) -> None:
        """Run one per-job step (the ticker's ``rounds``, ``liveness`` and ``checkpoint``; ``expel`` on a revocation)
        for every job, so that no job's failure reaches another: one job whose step raised used to end the ticker,
        and with it the deadlines of every job.

        Whatever ``action`` raises (a file name the disk refuses, a store write that fails, a bug) is logged once
        with the job's id and pauses that job with the reason, which ``admin status`` shows; an admin may start it
        again.  The other jobs' steps run as if nothing happened.  A pause the store refuses to record is still
        in force (the job's state is in memory) and is written again before the job's next step, at every tick
        until the store takes it.
        """
        for job in list(self.jobs.values()):
            if job.job_id in self._unrecorded:
                self._record_state(job)
            try:
                action(job)
            except Deposed:
                raise  # not this job's failure: the whole replica was deposed and stops (``coordinator.lease``)
            except Exception as exc:  # any exception on purpose: it is this job's, and the loop must go on
                self._failed(job, step, exc)
            else:
                self._failing.pop((job.job_id, step), None)

    def _failed(self, job: JobRuntime, step: str, exc: Exception) -> None:
        """Log one job's failed step (once while it keeps failing alike) and pause the job with the reason."""
        reason = f"{step} step failed: {type(exc).__name__}: {str(exc)[:MAX_ERROR]}"
        if self._failing.get((job.job_id, step)) == reason and job.state is not JobState.RUNNING:
            return  # handled at an earlier tick; an admin's start of the job makes it news again
        self._failing[(job.job_id, step)] = reason
        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ is not None else None
        log.error("job step failed", job_id=job.job_id, step=step, error=type(exc).__name__,
                  reason=str(exc)[:MAX_ERROR], at=f"{where.filename}:{where.lineno}" if where else "",
                  pauses=job.state not in TERMINAL)
        try:
            job.lifecycle.end(JobState.PAUSED, reason)
        except Exception as again:  # the store refused the pause too: in force in memory, recorded later
            self._unrecorded.add(job.job_id)
            log.error("job pause not recorded: retried at the next tick", job_id=job.job_id,
                      error=type(again).__name__, reason=str(again)[:MAX_ERROR])

    def _record_state(self, job: JobRuntime) -> None:
        """Write a job's state and reason as they are in memory (a pause the store refused at an earlier tick)."""
        try:
            self.store.set_job_state(job.job_id, job.state.value, job.lifecycle.reason)
        except Exception:  # still refused: the next tick tries again; the failure was logged when it began
            return
        self._unrecorded.discard(job.job_id)
        log.info("job state recorded", job_id=job.job_id, state=job.state.value)

    def views(self) -> list[JobView]:
        return [j.view() for j in self.jobs.values()]

    def participants(self, job_ref: str = "") -> list[ParticipantView]:
        jobs = [self.job(job_ref)] if job_ref else list(self.jobs.values())
        return [view for job in jobs for view in participant_views(job)]
