"""The members of one job: who may join, who joined with how much data, who is online, which versions each
has evaluated, and the states that keep a member out of selection.

A member is online while its last call is at most ``offline_after_s`` old.  Only active members are
selected; a member whose record-level privacy budget is spent (``EXHAUSTED``) or that was rejected by a
robust aggregator in ``quarantine_after`` consecutive rounds it took part in (``QUARANTINED``, until an
admin releases it) stays a member but is skipped, and a member whose certificate was revoked
(``REVOKED``) must join again with a valid identity.  Every change is written through to the store.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import structlog

from fedprompt.coordinator.store import MemberRow, MemberState, Store
from fedprompt.errors import InvalidRequest, NotEnrolled, NotFound, PreconditionFailed, quoted

log = structlog.get_logger("coordinator.roster")

MAX_EXAMPLES = 1_000_000_000


#: What a re-join keeps: a budget never resets and a quarantine outlives a re-join.
KEPT_ON_REJOIN = (MemberState.EXHAUSTED, MemberState.QUARANTINED)


class Roster:
    """One job's members and their standing."""

    def __init__(self, job_id: str, allowed: tuple[str, ...], store: Store, offline_after_s: float,
                 quarantine_after: int) -> None:
        """``quarantine_after`` is the number of consecutive rejections that quarantine a member (0: never)."""
        self.job_id = job_id
        self.allowed = allowed
        self.store = store
        self.offline_after_s = offline_after_s
        self.quarantine_after = quarantine_after
        self.members: dict[str, MemberRow] = {}
        self.initialiser: str | None = None  # the first member to join: it provides the initial prompt
        self.evaluated: dict[str, set[int]] = {}
        self.streaks: dict[str, int] = {}
        self.log = log.bind(job_id=job_id)

    def check_allowed(self, participant_id: str) -> None:
        """Enrollment: only identities on the job's allow-list (or any, with ``"*"``) may see or join it."""
        if participant_id not in self.allowed and "*" not in self.allowed:
            raise NotEnrolled(f"{participant_id} is not on the allow-list of job {self.job_id}")

    @staticmethod
    def check_counts(num_train: int, num_test: int) -> None:
        """A joining member's declared example counts must be plausible (they bound its weights and reports)."""
        if not 1 <= num_train <= MAX_EXAMPLES:
            raise InvalidRequest(f"num_train_examples must be in [1, {MAX_EXAMPLES}]")
        if not 0 <= num_test <= MAX_EXAMPLES:
            raise InvalidRequest(f"num_test_examples must be in [0, {MAX_EXAMPLES}]")

    def join(self, participant_id: str, num_train: int, num_test: int, now: float) -> MemberRow:
        """Add (or re-admit) a member whose request ``check_allowed`` and ``check_counts`` passed."""
        previous = self.members.get(participant_id)
        state = previous.state if previous is not None and previous.state in KEPT_ON_REJOIN else MemberState.ACTIVE
        row = MemberRow(self.job_id, participant_id, num_train, num_test, previous.joined_at if previous else now,
                        now, state)
        self._write(row)
        self.evaluated.setdefault(participant_id, set())
        if self.initialiser is None:
            self.initialiser = participant_id
        return row

    def touch(self, participant_id: str, now: float) -> MemberRow:
        """A member's call: ``NotEnrolled`` unless it joined (and was not revoked since); marks it seen."""
        member = self.members.get(participant_id)
        if member is None or member.state is MemberState.REVOKED:
            raise NotEnrolled(f"{participant_id} has not joined job {self.job_id}")
        self.members[participant_id] = seen = dataclasses.replace(member, last_seen=now)
        return seen

    def online(self, now: float) -> list[str]:
        """Active members seen within ``offline_after_s``, sorted; read from a copy of the members, since the metrics
        endpoint counts them from its own thread while the event loop may add one."""
        cutoff = now - self.offline_after_s
        return sorted(p for p, m in list(self.members.items())
                      if m.state is MemberState.ACTIVE and m.last_seen >= cutoff)

    def with_budget(self) -> int:
        """Members whose record-level privacy budget is not spent (a quarantine or a revocation is no end of
        budget: the job waits for eligible members instead)."""
        return sum(1 for m in self.members.values() if m.state is not MemberState.EXHAUSTED)

    def set_state(self, participant_id: str, state: MemberState) -> None:
        self._write(dataclasses.replace(self.members[participant_id], state=state))

    def evaluated_on(self, participant_id: str, version: int) -> bool:
        return version in self.evaluated[participant_id]

    def mark_evaluated(self, participant_id: str, version: int) -> None:
        self.evaluated[participant_id].add(version)

    def record_verdict(self, accepted: Iterable[str], rejected: Iterable[str]) -> list[str]:
        """Update rejection streaks after a robust decision; returns the members it quarantined."""
        for pid in accepted:
            self.streaks[pid] = 0
        quarantined = []
        for pid in rejected:
            self.streaks[pid] = self.streaks.get(pid, 0) + 1
            limit = self.quarantine_after
            if limit and self.streaks[pid] >= limit and self.members[pid].state is MemberState.ACTIVE:
                self.set_state(pid, MemberState.QUARANTINED)
                quarantined.append(pid)
        return quarantined

    def release(self, participant_id: str) -> MemberState:
        """Admin: lift a quarantine; the participant is eligible for selection again with a fresh streak."""
        member = self.members.get(participant_id)
        if member is None:
            raise NotFound(f"{quoted(participant_id)} is not a member of job {self.job_id}")
        if member.state is not MemberState.QUARANTINED:
            raise PreconditionFailed(f"{participant_id} is not quarantined (state {member.state.value})")
        self.set_state(participant_id, MemberState.ACTIVE)
        self.streaks[participant_id] = 0
        self.log.info("participant released", participant=participant_id)
        return MemberState.ACTIVE

    def quarantined(self) -> tuple[str, ...]:
        return tuple(sorted(p for p, m in self.members.items() if m.state is MemberState.QUARANTINED))

    def restore(self, members: list[MemberRow], evaluated: Mapping[str, set[int]], streaks: dict[str, int],
                now: float) -> None:
        """After a coordinator restart: the stored members (each given ``offline_after_s`` of grace from ``now``,
        since liveness is not stored), the versions each evaluated, and the replayed rejection streaks."""
        self.members = {m.participant_id: dataclasses.replace(m, last_seen=max(m.last_seen, now)) for m in members}
        self.initialiser = members[0].participant_id if members else None
        self.evaluated = {m.participant_id: set() for m in members} | dict(evaluated)
        self.streaks = streaks

    def _write(self, row: MemberRow) -> None:
        self.members[row.participant_id] = row
        self.store.upsert_member(row)
