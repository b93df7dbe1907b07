"""Task dispatch: what a member of a job should do next, and where the job stands, in words for its status.

A member evaluates each new global version first (its metrics are the job's progress report), then trains
when it is selected for the open round; a key holder chosen to decrypt a round's Gram matrix, or a threshold
job's member named to make a decryption share, does that before anything else, since the round waits on it.  Otherwise it waits, and is told why.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING

from fedprompt.coordinator.rounds import RoundState
from fedprompt.coordinator.store import JobState, MemberState
from fedprompt.coordinator.threshold_gramjob import GramDecryption
from fedprompt.protocol import Task, TaskKind

if TYPE_CHECKING:
    from fedprompt.coordinator.runtime import JobRuntime


def next_task(job: JobRuntime, participant_id: str) -> Task:
    """The caller's next task: decrypt a Gram matrix if asked, evaluate the newest version, then train."""
    job.roster.touch(participant_id, job.clock())
    if job.state in (JobState.CANCELLED, JobState.FAILED):
        return Task(TaskKind.DONE, reason=f"job {job.state.value}: {job.lifecycle.reason}")
    if job.keys is not None and not job.keys.holds(participant_id):
        return Task(TaskKind.WAIT, reason="waiting for the members' threshold key setup" if job.config.he.threshold_mode
                    else "waiting for a key holder to share the job key")
    r = job.rounds.open
    decryption = r.fold.threshold.decryption if r is not None and r.fold.threshold is not None else None
    if r is not None and r.state is RoundState.DECRYPTING and decryption and decryption.awaiting(participant_id):
        return Task(TaskKind.SHARE, round=r.number, deadline=r.deadline, attempt=r.attempt)
    if r is not None and r.gram is not None and r.gram.awaiting(participant_id):
        return Task(TaskKind.DECRYPT, round=r.number, deadline=r.deadline)
    if r is not None and r.check is not None and r.state is RoundState.CHECKING and r.check.awaiting(participant_id):
        return Task(TaskKind.CHECK, round=r.number, deadline=r.deadline)
    latest = job.latest_version()
    if latest is None:
        return Task(TaskKind.WAIT, reason="waiting for the initial prompt")
    if not job.roster.evaluated_on(participant_id, latest):
        return Task(TaskKind.EVALUATE, global_version=latest)
    member = job.roster.members[participant_id]
    if member.state is MemberState.QUARANTINED and job.state is not JobState.DONE:
        return Task(TaskKind.WAIT, reason="quarantined after repeated rejected updates; an admin must release it")
    if (r is not None and r.state is RoundState.TRAINING and r.selects(participant_id)
            and participant_id not in r.reported and job.clock() < r.deadline):
        return Task(TaskKind.TRAIN, round=r.number, global_version=r.number - 1, deadline=r.deadline,
                    attempt=r.attempt)
    if job.state is JobState.DONE:
        return Task(TaskKind.DONE, reason="all rounds completed")
    return Task(TaskKind.WAIT, reason=phase(job))


def dispatch_state(job: JobRuntime) -> Hashable:
    """All that can turn a waiting member's next task into work, as one comparable value: the job's state, the
    newest version, the open attempt and its step (a Gram threshold job's decryption phase too), and the key
    relay's progress (``coordinator.notifier`` wakes
    long-polls when it changes).  A member's own progress (its update, its reports) is left out: only its own
    calls change it.  What only admin calls, key relay and revocations change (a release, a member expelled) is
    left out too: those wake every long-poll themselves."""
    r = job.rounds.open
    decryption = r.fold.threshold.decryption if r is not None and r.fold.threshold is not None else None
    attempt = None if r is None else (r.number, r.attempt, r.state, r.gram is not None and r.gram.computed,
                                      None if r.check is None else r.check.stage,
                                      decryption.phase if isinstance(decryption, GramDecryption) else None)
    keys = None if job.keys is None else job.keys.progress()
    return job.state, job.latest_version(), attempt, keys


def phase(job: JobRuntime) -> str:
    """Human-readable position in the round state machine."""
    r = job.rounds.open
    if job.state is not JobState.RUNNING:
        return f"job {job.state.value}"
    if r is None:
        return f"waiting for {job.config.job.min_participants} online participants"
    if r.state is RoundState.DECIDING and r.gram is not None and not r.gram.computed:
        return f"round {r.number} computing its encrypted Gram matrix ({len(r.gram.order)} updates)"
    if r.state is RoundState.DECIDING and r.gram is not None:
        waiting = [p for p in r.gram.decryptors if r.gram.awaiting(p)]
        return f"round {r.number} deciding: Gram matrix with decryptors {', '.join(waiting)}"
    if r.state is RoundState.DECRYPTING and r.fold.threshold is not None and r.fold.threshold.decryption:
        return f"round {r.number} decrypting: shares from {', '.join(r.fold.threshold.decryption.missing)}"
    if r.state is RoundState.CHECKING and r.check is not None:
        waiting = [p for p in r.check.checkers if r.check.awaiting(p)]
        return f"round {r.number} checking its {r.check.stage.value}: key holders {', '.join(waiting)}"
    return f"round {r.number} training ({len(r.reported)}/{len(r.selected)} reported)"
