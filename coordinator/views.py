"""What an admin sees of a job: its rounds with their metrics, its members, and its robust-aggregation
verdicts, read from the store and the job's live state (``fedprompt.protocol`` view types)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedprompt.coordinator.rounds import RoundState
from fedprompt.coordinator.store import MemberState
from fedprompt.protocol import FlagsView, JobView, ParticipantView, RoundView

if TYPE_CHECKING:
    from fedprompt.coordinator.runtime import JobRuntime


def flags(job: JobRuntime) -> FlagsView:
    """Every stored robust-aggregation verdict, the quarantined members and the current rejection streaks."""
    return FlagsView(tuple(job.store.decisions(job.job_id)), job.roster.quarantined(),
                     dict(sorted(job.roster.streaks.items())))


def job_view(job: JobRuntime) -> JobView:
    """A job's status: every round attempt (with the metrics reported on the version it produced and whom
    its robust aggregator rejected), and where the job stands now."""
    store, job_id = job.store, job.job_id
    rejected: dict[tuple[int, int], list[str]] = {}
    for d in store.decisions(job_id):
        if not d.accepted:
            rejected.setdefault((d.round, d.attempt), []).append(d.participant_id)
    r = job.rounds.open
    rounds = []
    for row in store.rounds(job_id):
        metrics, reports = store.metric_means(job_id, row.round) if row.state == RoundState.DONE.value else ({}, 0)
        reported = tuple(sorted(r.reported)) if r and r.number == row.round and r.attempt == row.attempt else ()
        rounds.append(RoundView(row.round, row.state, row.attempt, row.selected, reported, row.opened_at,
                                row.closed_at, row.bytes_up, row.bytes_down, {**row.summary, **metrics}, reports,
                                tuple(rejected.get((row.round, row.attempt), ()))))
    initial, _ = store.metric_means(job_id, 0)
    latest = job.latest_version()
    return JobView(
        job_id=job_id, name=job.config.job.name, state=job.state.value,
        current_round=r.number if r else (latest or 0), total_rounds=job.config.job.rounds,
        global_version=latest if latest is not None else -1, participants=len(job.roster.members),
        aggregator=job.aggregator.name, vector_size=job.vector_size, config_toml=job.config_toml,
        initial_metrics=initial, rounds=tuple(rounds), reason=job.lifecycle.reason or job.phase,
        quarantined=job.roster.quarantined(),
    )


def participant_views(job: JobRuntime) -> list[ParticipantView]:
    """Each member of a job: its standing (``offline`` for an active member not seen lately), data size, join
    and last-seen times, updates sent, and its latest record-level privacy report."""
    counts = job.store.update_counts(job.job_id)
    privacy = {row.participant_id: row for row in job.store.privacy_reports(job.job_id)}
    online = set(job.roster.online(job.clock()))
    out = []
    for m in job.roster.members.values():
        state = "offline" if m.state is MemberState.ACTIVE and m.participant_id not in online else m.state.value
        report = privacy.get(m.participant_id)
        out.append(ParticipantView(m.participant_id, job.job_id, state, m.num_train, m.joined_at, m.last_seen,
                                   counts.get(m.participant_id, 0), report.reason if report and report.declined else "",
                                   report.epsilon if report else 0.0))
    return out
