"""Resume after a coordinator restart: rebuild every job's round state machine from the SQLite store.

What is durable (one transaction per change, ``synchronous=FULL``): jobs and their state, memberships,
every round attempt with its selection, the bookkeeping of received updates (who, weight, size, digest),
every global prompt version, the metrics reported on each version, robust verdicts (from which rejection
streaks are replayed), and an encrypted job's key relay (public context, exchange keys, sealed keys,
evaluation keys: nothing that opens a ciphertext).

What is not: the *payloads* of an open round's updates.  They are held in memory only, by design (the
coordinator keeps no individual update at rest; with homomorphic encryption they are folded into a running
ciphertext sum).  A round that was collecting when the coordinator died therefore cannot continue: it is
marked failed (summary ``restarted = 1``) and restarted cleanly as the next attempt of the same round, from
the same global version; a restart does not count towards the round's ``max_attempts``.  Participants resubmit; because local training is a pure function of the global
prompt, the participant and the round number, their resubmitted updates equal the lost ones, so the job
ends with the prompt an uninterrupted run would have produced.  A round whose aggregate had already been
stored when the coordinator died is simply marked done: no completed round's global prompt is ever lost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import structlog

from fedprompt.config import JobConfig, parse_toml
from fedprompt.coordinator.jobs import MAX_ERROR, JobManager
from fedprompt.coordinator.rounds import IN_FLIGHT, RoundState
from fedprompt.coordinator.runtime import JobRuntime
from fedprompt.coordinator.store import TERMINAL, JobRow, JobState, RoundRow
from fedprompt.errors import ERRORS
from fedprompt.protocol import FlagView

log = structlog.get_logger("coordinator.recovery")

_IN_FLIGHT = tuple(state.value for state in IN_FLIGHT)


def rejection_streaks(decisions: Iterable[FlagView], limit: int) -> dict[str, int]:
    """Each participant's consecutive robust rejections, replayed from the stored verdicts in round order.

    A member whose streak reached ``limit`` was quarantined at that verdict, and a quarantined member is never
    selected; so a later verdict about it means an admin released it in between, which resets the streak.
    The replay is therefore exact, and a restart does not give a repeatedly rejected participant a clean slate.
    """
    streaks: dict[str, int] = {}
    for d in decisions:
        if limit and streaks.get(d.participant_id, 0) >= limit:
            streaks[d.participant_id] = 0  # released since it was quarantined
        streaks[d.participant_id] = 0 if d.accepted else streaks.get(d.participant_id, 0) + 1
    return streaks


def attempts_of(rounds: Iterable[RoundRow], current: int, max_attempts: int, state: JobState) -> tuple[int, int]:
    """The current round's next attempt number (after every stored one, so none is reused) and its counted
    failures: a crash restart (``restarted``) is no failure of the round, and a job still running with a
    count at the limit was started again by the admin after it paused, which starts the count afresh."""
    attempts = sorted((r for r in rounds if r.round == current), key=lambda r: r.attempt)
    failed = [r for r in attempts if r.state == RoundState.FAILED.value and "restarted" not in r.summary]
    failures = int(failed[-1].summary.get("failures", 0)) if failed else 0
    if state is JobState.RUNNING and failures >= max_attempts:
        failures = 0
    return (attempts[-1].attempt + 1 if attempts else 1), failures


def restore_job(jobs: JobManager, row: JobRow) -> JobRuntime:
    """One job's ``JobRuntime`` as it stood at the last committed transaction, its open round closed."""
    store = jobs.store
    config = parse_toml(row.config_toml, JobConfig, f"stored config of job {row.job_id}")
    job = JobRuntime(row.job_id, config, row.config_toml, store, jobs.clock, jobs.offline_after_s,
                     offload=jobs.offload, events=jobs.events)
    now = jobs.clock()
    latest = store.latest_version(row.job_id)
    for r in store.rounds(row.job_id):
        if r.state not in _IN_FLIGHT:
            continue
        store.save_round(dataclasses.replace(r, state=RoundState.FAILED.value, closed_at=now,
                                             summary={**r.summary, "restarted": 1.0}))
        log.warning(f"round {r.round} restarted cleanly: partial sum not recoverable", job_id=row.job_id,
                    round=r.round, failed_attempt=r.attempt, next_attempt=r.attempt + 1)
    state = JobState(row.state)
    next_attempt, failures = attempts_of(store.rounds(row.job_id), (latest or 0) + 1, job.rounds.max_attempts, state)
    # Liveness is not persisted: every member gets one offline_after_s of grace from the restart, during which
    # its daemon reconnects (GrpcLink retries) and its heartbeats take over.
    job.restore(state, row.reason, row.vector_size, store.members(row.job_id), store.evaluated(row.job_id),
                rejection_streaks(store.decisions(row.job_id), job.roster.quarantine_after), next_attempt, failures)
    if job.keys is not None:
        try:
            job.keys.restore()
        except ERRORS as exc:  # a stored key that fails its check again: never aggregate under it
            job.log.error("key relay not restored", reason=str(exc))
            job.lifecycle.end(JobState.PAUSED, f"key relay not restored: {exc}")
    if job.privacy.error:
        job.lifecycle.end(JobState.PAUSED, job.privacy.error)
    if latest is not None and latest >= config.job.rounds:
        job.lifecycle.end(JobState.DONE, "all rounds completed")
    job.log.info("job resumed", state=job.state.value, global_version=-1 if latest is None else latest,
                 members=len(job.roster.members), next_attempt=next_attempt)
    return job


def resume_jobs(jobs: JobManager) -> list[str]:
    """Load every stored job into ``jobs`` (finished ones too, for status and export); returns the
    ids of the unfinished ones, whose next round opens at once if enough members are online.  A job that cannot
    be restored (its stored config refused by today's validation, say) is logged and left out, untouched."""
    unfinished = []
    for row in jobs.store.jobs():
        try:
            job = restore_job(jobs, row)
        except Exception as exc:  # any exception on purpose: one stored job must not stop the coordinator's start
            # e.g. a config stored before a rule that now refuses it; its rows stay as they are, for a later
            # release or an operator to read, and the other jobs go on
            log.error("job not restored: left as stored", job_id=row.job_id, state=row.state,
                      error=type(exc).__name__, reason=str(exc)[:MAX_ERROR])
            continue
        jobs.jobs[row.job_id] = job
        if job.state not in TERMINAL:
            unfinished.append(row.job_id)

    def first_tick(job: JobRuntime) -> None:
        if job.job_id in unfinished:
            job.tick()

    jobs.each("rounds", first_tick)  # one job's failing first round pauses that job, not the coordinator's start
    log.info("coordinator state restored", jobs=len(jobs.jobs), unfinished=len(unfinished))
    return unfinished
