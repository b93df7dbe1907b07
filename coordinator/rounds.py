"""The round state machine of one job: which round attempt is open, in which state, whom it selected, who
reported, and how many attempts of the current round have failed.

An attempt is *training* while it collects the selected members' updates.  When all selected reported, or
at the deadline with at least ``job.min_participants`` of them, it closes: an encrypted round whose
aggregator decides on a Gram matrix is first *deciding* (the coordinator computes the encrypted Gram matrix
of the kept updates and two key holders decrypt its scalars, under a fresh deadline), then it is *done*
(its aggregate stored as the next global version) or *failed*.  Below the minimum at the deadline, or when
too few selected members are left, the attempt fails and the round is retried with a fresh selection;
after ``max_attempts`` such failures the job pauses with the reason in its status, and starting it again
gives the round ``max_attempts`` more.  A coordinator restart is no failure of the round (it does not
count), and attempt numbers never repeat within a round, so each attempt draws a new selection and keeps its
row.

Global version ``v`` is the prompt after ``v`` aggregated rounds: round ``r`` trains from version ``r - 1``
and produces version ``r``.  Selection draws up to ``job.participants_per_round`` of the eligible members,
seeded by the job seed, the round and the attempt, so a replay selects alike.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from fedprompt.config import JobConfig
from fedprompt.coordinator.accumulators import Accumulator, Fold, Outcome
from fedprompt.coordinator.aggregation import RoundDecision
from fedprompt.coordinator.checks import CheckRound, Stage
from fedprompt.coordinator.events import RoundEvents
from fedprompt.coordinator.hegram import GramRound, choose_decryptors
from fedprompt.coordinator.keys import JobKeys
from fedprompt.coordinator.offload import Offload
from fedprompt.coordinator.privacy import ParticipantLedger
from fedprompt.coordinator.roster import Roster
from fedprompt.coordinator.store import JobState, MemberState, RoundRow, Store
from fedprompt.coordinator.threshold import Decryption
from fedprompt.errors import DecryptorDisagreement, PreconditionFailed, StaleRound
from fedprompt.protocol import FlagView
from fedprompt.wire.bundle import pack_bundle

log = structlog.get_logger("coordinator.rounds")

#: Encrypted jobs: how long a newly joined member without the key holds back the next round (key relay in flight).
KEY_GRACE_S = 30.0


class RoundState(enum.Enum):
    TRAINING = "training"
    DECIDING = "deciding"
    CHECKING = "checking"
    DECRYPTING = "decrypting"  # a threshold job's aggregate awaits t members' decryption shares
    AGGREGATING = "aggregating"
    DONE = "done"
    FAILED = "failed"


#: States of an attempt that a coordinator restart interrupts (its updates were held in memory only).
IN_FLIGHT = (RoundState.TRAINING, RoundState.DECIDING, RoundState.CHECKING, RoundState.DECRYPTING,
             RoundState.AGGREGATING)


@dataclass
class OpenRound:
    """The open attempt of a round: its selection, who reported with how many examples, and its fold."""

    number: int
    attempt: int
    selected: tuple[str, ...]
    opened_at: float
    deadline: float
    sample_rate: float
    fold: Fold
    state: RoundState = RoundState.TRAINING
    check: CheckRound | None = None  # the key holders' check of an encrypted attempt (state CHECKING)
    candidate: Outcome | None = None  # the encrypted aggregate awaiting that check
    reported: dict[str, int] = field(default_factory=dict)
    bytes_up: int = 0
    bytes_down: int = 0

    def __post_init__(self) -> None:
        self._chosen = frozenset(self.selected)

    def selects(self, participant_id: str) -> bool:
        """Whether ``participant_id`` is in the selection: a set lookup, since every call of every member asks
        (a scan of the selection made a round of N members cost N^2)."""
        return participant_id in self._chosen

    def deselect(self, participant_id: str) -> None:
        """Take a member out of the selection (it declined or was expelled)."""
        self.selected = tuple(p for p in self.selected if p != participant_id)
        self._chosen = frozenset(self.selected)

    @property
    def gram(self) -> GramRound | None:
        """The kept ciphertexts of a round that decides on an encrypted Gram matrix."""
        return self.fold.gram

    @property
    def complete(self) -> bool:
        """Every selected member reported."""
        return bool(self.selected) and len(self.reported) == len(self.selected)

    def row(self, job_id: str, state: RoundState | None = None, closed_at: float = 0.0,
            summary: dict[str, float] | None = None) -> RoundRow:
        return RoundRow(job_id, self.number, self.attempt, (state or self.state).value, self.selected,
                        self.opened_at, self.deadline, closed_at, self.bytes_up, self.bytes_down, summary or {})


@dataclass(frozen=True)
class JobEnd:
    """What the rounds ask of the job: to end (``DONE``: every round aggregated, or no budget left) or to
    pause (``PAUSED``: a round failed ``max_attempts`` times), with the reason for its status."""

    state: JobState
    reason: str


class RoundMachine:
    """One job's round attempts; every transition is written through to the store.

    ``tick`` and ``settle`` return a ``JobEnd`` when the job must stop; the job applies it."""

    def __init__(self, job_id: str, config: JobConfig, store: Store, clock: Callable[[], float], roster: Roster,
                 accumulator: Accumulator, keys: JobKeys | None, privacy: ParticipantLedger, offload: Offload,
                 max_attempts: int = 3, events: RoundEvents | None = None) -> None:
        self.job_id, self.events, self.config, self.store, self.clock = job_id, events or RoundEvents(), config, store, clock
        self.roster, self.accumulator, self.keys, self.privacy = roster, accumulator, keys, privacy
        self.offload, self.max_attempts = offload, max_attempts
        self.open: OpenRound | None = None
        self.next_attempt = 1
        self.failures = 0  # failed attempts of the current round since the job (re)started
        self.downloads: dict[int, int] = {}  # bytes of each global version served to members
        self.log = log.bind(job_id=job_id)

    # ---- events of the open attempt ----------------------------------------------------------------
    def report(self, participant_id: str, num_examples: int, num_bytes: int) -> None:
        r = self.require()
        r.reported[participant_id] = num_examples
        r.bytes_up += num_bytes
        self.events.update_accepted(self.job_id, num_bytes)

    def withdraw(self, participant_id: str) -> bool:
        """Take a member out of the open attempt's selection (it declined or was expelled); True if it was in."""
        r = self.open
        if r is None or not r.selects(participant_id):
            return False
        r.reported.pop(participant_id, None)
        r.fold.discard(participant_id)
        r.deselect(participant_id)
        self.store.save_round(r.row(self.job_id))
        return True

    def decrypting(self, round_: int) -> GramRound:
        """The open attempt's Gram matrix, computed and awaiting its decryptors (``StaleRound`` otherwise)."""
        r = self.open
        if r is None or r.number != round_ or r.gram is None or not r.gram.computed:
            current = "none" if r is None else str(r.number)
            raise StaleRound(f"no encrypted Gram matrix awaits decryption for round {round_} (open round: {current})")
        return r.gram

    def decryption(self, round_: int) -> Decryption:
        """The open attempt's threshold decryption, awaiting its members' shares (``StaleRound`` otherwise)."""
        r = self.open
        machine = r.fold.threshold if r is not None and r.number == round_ else None
        if r is None or machine is None or machine.decryption is None or r.state is not RoundState.DECRYPTING:
            raise StaleRound(f"nothing awaits decryption shares for round {round_}")
        return machine.decryption

    def checking(self, round_: int) -> CheckRound:
        """The open attempt's check, awaiting its key holders (``StaleRound`` otherwise)."""
        r = self.open
        if r is None or r.number != round_ or r.check is None or r.state is not RoundState.CHECKING:
            current = "none" if r is None else str(r.number)
            raise StaleRound(f"nothing awaits a check for round {round_} (open round: {current})")
        return r.check

    def served(self, version: int, num_bytes: int) -> None:
        """A member downloaded ``num_bytes`` of global ``version`` (the bytes down of the round trained from it)."""
        self.downloads[version] = self.downloads.get(version, 0) + num_bytes
        self.events.served(self.job_id, num_bytes)

    # ---- the loop ----------------------------------------------------------------------------------
    def tick(self, running: bool) -> JobEnd | None:
        """Time passes: settle the open attempt, then open the next round when one is due and the job runs."""
        end = self.settle()
        latest = self.store.latest_version(self.job_id)
        if end is None and running and self.open is None and latest is not None and latest < self.config.job.rounds:
            end = self._open_round(latest + 1)
        return end

    def settle(self) -> JobEnd | None:
        """The one place where the open attempt changes state: training ends when every selected member
        reported, or at the deadline (with enough updates, else the attempt fails); a fold that keeps a Gram
        matrix then decides on it, until both decryptors answered or the renewed deadline passed."""
        r, now, minimum = self.open, self.clock(), self.config.job.min_participants
        if r is None:
            return None
        if r.state is RoundState.TRAINING:
            if len(r.selected) < minimum:
                return self._fail(f"{len(r.selected)} selected members left, minimum {minimum}")
            if now >= r.deadline and len(r.reported) < minimum:
                return self._fail(f"deadline passed with {len(r.reported)} of {len(r.selected)} updates, minimum "
                                  f"{minimum}")
            if not (r.complete or now >= r.deadline):
                return None
            r.bytes_down = self.downloads.get(r.number - 1, 0)  # the global this round trained from
            if r.gram is None:
                return self._close(r)
            why = self._decide(r)
            return self._close(r, why) if why else None
        if r.state is RoundState.CHECKING and r.check is not None:
            if r.check.answered:
                return self._checked(r, r.check)
            if now < r.deadline:
                return None
            silent = ", ".join(p for p in r.check.checkers if r.check.awaiting(p))
            return self._fail(f"checkers {silent} did not answer before the deadline")
        decryption = r.fold.threshold.decryption if r.fold.threshold is not None else None
        if r.state is RoundState.DECRYPTING and decryption is not None and (decryption.complete or now >= r.deadline):
            late = "" if decryption.complete else ", ".join(decryption.missing)
            return self._close(r, late and f"decryptors {late} did not answer before the deadline: a new attempt")
        gram = r.gram
        if r.state is not RoundState.DECIDING or gram is None:
            return None
        if gram.failure:
            return self._close(r, gram.failure)
        if gram.answered:
            return self._close(r)
        if now < r.deadline:
            return None
        if not gram.computed:
            return self._close(r, "the encrypted Gram matrix was not computed before the deadline")
        silent = ", ".join(p for p in gram.decryptors if gram.awaiting(p))
        return self._close(r, f"Gram decryptors {silent} did not answer before the deadline")

    def _decide(self, r: OpenRound) -> str:
        """Training is over for a fold that keeps a Gram matrix: draw two decryptors and compute the matrix
        (``offload``: on a worker thread in the server).  Returns why that cannot happen ("" if it can)."""
        assert r.gram is not None and self.keys is not None
        why = r.fold.gram_refusal()
        if why:
            return why
        holders = [p for p in self.roster.online(self.clock()) if self.keys.holds(p)]
        try:
            decryptors = choose_decryptors(holders, r.reported,
                                           f"{self.config.job.seed}:{r.number}:{r.attempt}:decryptors")
        except PreconditionFailed as exc:
            return str(exc)
        r.gram.begin(decryptors)
        r.state = RoundState.DECIDING
        self.renew_deadline(r)
        self.offload(r.gram.compute, lambda outcome: self._gram_computed(r, outcome))
        return ""

    def _gram_computed(self, r: OpenRound, outcome: bytes | Exception) -> None:
        """The offloaded Gram step is back: hand the matrix to the decryptors, with a fresh deadline for them.
        An attempt that closed meanwhile (deadline, cancel, expulsion) keeps its outcome; this one is dropped."""
        assert r.gram is not None
        if self.open is not r:
            self.log.info("encrypted Gram matrix dropped: its round attempt closed while it was computed",
                          round=r.number, attempt=r.attempt)
        elif isinstance(outcome, Exception):
            r.gram.failure = f"the encrypted Gram matrix could not be computed: {outcome}"
        else:
            r.gram.payload = outcome
            self.renew_deadline(r)
            self.events.gram_computed(self.job_id, r.gram.gram_seconds)
            self.log.info("encrypted Gram matrix computed", round=r.number, updates=len(r.gram.order),
                          seconds=round(r.gram.gram_seconds, 3), bytes=len(outcome), decryptors=list(r.gram.decryptors))

    def renew_deadline(self, r: OpenRound) -> None:
        """A fresh ``round_deadline_s`` for the step the attempt waits on now."""
        r.deadline = self.clock() + self.config.job.round_deadline_s
        self.store.save_round(r.row(self.job_id))

    def _close(self, r: OpenRound, postponed: str = "") -> JobEnd | None:
        """Close the attempt through its fold: an encrypted aggregate goes to two key holders' check first
        (``coordinator.checks``); a usable one is stored, or the attempt fails.  A threshold job's fold goes to
        t online members for their decryption shares first (``coordinator.threshold``)."""
        if r.fold.threshold is not None and r.state is RoundState.TRAINING:
            online = set(self.roster.online(self.clock()))
            if r.fold.threshold.close(online.__contains__) is None:
                return self._fail(f"fewer than t = {r.fold.threshold.relay.params.t} online members may decrypt "
                                  "these uploads (a member decrypts one uploader set per round)")
            r.state = RoundState.DECRYPTING
            self.renew_deadline(r)
            return None
        outcome = r.fold.close(postponed)
        if outcome.refusal:
            return self._fail(outcome.refusal)
        if not self.accumulator.verifies:
            return self._complete(r, outcome)
        r.candidate = outcome
        return self._start_check(r, Stage.AGGREGATE, [(False, outcome.data)], [outcome.weight])

    def _start_check(self, r: OpenRound, stage: Stage, parts: list[tuple[bool, bytes]], expected: list[float],
                     owners: Sequence[str] = ()) -> JobEnd | None:
        """Hand ``parts`` to two online key holders (non-contributors first) to check, under a fresh deadline."""
        assert self.keys is not None
        holders = [p for p in self.roster.online(self.clock()) if self.keys.holds(p)]
        try:
            checkers = choose_decryptors(holders, r.reported, f"{self.config.job.seed}:{r.number}:{r.attempt}:check")
        except PreconditionFailed as exc:
            return self._fail(f"the encrypted aggregate cannot be checked: {exc}")
        r.check = CheckRound(stage, pack_bundle(parts), expected, checkers, owners)
        r.state = RoundState.CHECKING
        self.renew_deadline(r)
        self.log.info("round checking", round=r.number, stage=stage.value, parts=len(parts), checkers=list(checkers))
        return None

    def _checked(self, r: OpenRound, check: CheckRound) -> JobEnd | None:
        """Both checkers answered: store the usable aggregate; else check each kept update, masked (or keep
        them from the next attempt on); exclude and quarantine the members whose update fails alone."""
        try:
            failed = check.failed()
        except DecryptorDisagreement as exc:
            self.log.warning("check refused: checkers disagree", round=r.number, reason=str(exc))
            return self._fail(f"check refused: {exc}")
        if check.stage is Stage.AGGREGATE and not failed:
            assert r.candidate is not None
            return self._complete(r, r.candidate)
        if check.stage is Stage.AGGREGATE:
            self.log.warning("aggregate refused by its checkers: it does not decrypt as a sum of usable updates",
                             round=r.number, checkers=list(check.checkers), audit=bool(r.fold.kept))
            if not r.fold.kept:
                self.accumulator.audit = True
                return self._fail("the aggregate does not decrypt under the job key (an update under another key, "
                                  "or with values beyond the encryptable range): the next attempts keep every "
                                  "update to find it", {"invalid_aggregate": 1.0})
            owners = list(r.fold.kept)
            return self._start_check(r, Stage.AUDIT, [(True, self.accumulator.masked(r.fold.kept[p])) for p in owners],
                                     [self.accumulator.expected_weight(r.reported.get(p, 0)) for p in owners], owners)
        culprits = tuple(check.owners[i] for i in failed)
        if not culprits:
            return self._fail("the aggregate failed its check but every update passes alone")
        self._record(r, RoundDecision("he_check", "usable_under_job_key", tuple(
            p for p in check.owners if p not in culprits), culprits,
            {p: float(p not in culprits) for p in check.owners}))
        for pid in culprits:
            if self.roster.members[pid].state is MemberState.ACTIVE:
                self.roster.set_state(pid, MemberState.QUARANTINED)
            self.log.warning("participant quarantined: its update fails the key holders' check", participant=pid,
                             round=r.number)
        return self._fail(f"the updates of {', '.join(culprits)} fail the key holders' check (another key, or "
                          "values beyond the encryptable range): quarantined, the round is retried without them",
                          {"excluded": float(len(culprits))}, counted=False)

    def _complete(self, r: OpenRound, outcome: Outcome) -> JobEnd | None:
        """Store the attempt's new version with its summary and verdict (one transaction for the version and
        the closed row) and close it."""
        if outcome.decision is not None:
            self._record(r, outcome.decision)
        summary = {**outcome.metrics, "updates": float(len(r.reported)), "examples": float(sum(r.reported.values())),
                   **self.privacy.summary(r.number, r.reported, r.sample_rate)}
        self.store.complete_round(r.row(self.job_id, RoundState.DONE, self.clock(), summary),
                                  self.accumulator.encoding, outcome.data)
        self.accumulator.committed(outcome.data)
        self.log.info("round aggregated", round=r.number, updates=len(r.reported))
        self.events.round_completed(self.job_id, self.clock() - r.opened_at)
        self.open = None
        self.next_attempt, self.failures = 1, 0
        return JobEnd(JobState.DONE, "all rounds completed") if r.number >= self.config.job.rounds else None

    def _fail(self, why: str, summary: dict[str, float] | None = None, counted: bool = True) -> JobEnd | None:
        """Close the attempt as failed; the job pauses at the round's ``max_attempts``-th counted failure (an
        attempt that found and excluded its culprits does not count)."""
        r = self.require()
        self.failures += counted
        self.store.save_round(r.row(self.job_id, RoundState.FAILED, self.clock(),
                                    {"failed": 1.0, "failures": float(self.failures), **(summary or {})}))
        self.log.warning("round failed", round=r.number, attempt=r.attempt, failures=self.failures, reason=why)
        self.events.round_failed(self.job_id)
        self.open = None
        self.next_attempt = r.attempt + 1
        if self.failures >= self.max_attempts:
            return JobEnd(JobState.PAUSED, f"round {r.number} failed {self.failures} times: {why}")
        return None

    def _open_round(self, number: int) -> JobEnd | None:
        """Open an attempt of round ``number`` when enough eligible members are online: a seeded selection of up
        to ``job.participants_per_round`` of them (job seed, round, attempt)."""
        settings = self.config.job
        with_budget = self.roster.with_budget()
        if with_budget < len(self.roster.members) and with_budget < settings.min_participants:
            return JobEnd(JobState.DONE, f"only {with_budget} participants have privacy budget left, minimum "
                                         f"{settings.min_participants}")
        eligible = [p for p in self.roster.online(self.clock()) if self.keys is None or self.keys.holds(p)]
        if (len(eligible) < settings.min_participants or self._awaiting_keys()
                or (self.keys is not None and not self.keys.ready())):
            return None
        k = min(settings.participants_per_round, len(eligible))
        refusal = self.privacy.refusal(k / len(eligible))
        if refusal:
            return JobEnd(JobState.DONE, refusal)
        rng = random.Random(f"{settings.seed}:{number}:{self.next_attempt}")
        now = self.clock()
        self.open = OpenRound(number, self.next_attempt, tuple(sorted(rng.sample(eligible, k))), now,
                              now + settings.round_deadline_s, k / len(eligible), self.accumulator.fold(number, self.next_attempt))
        self.store.save_round(self.open.row(self.job_id))
        self.log.info("round opened", round=number, attempt=self.open.attempt, selected=list(self.open.selected))
        return None

    def _awaiting_keys(self) -> bool:
        """Encrypted jobs: an online member that joined within ``KEY_GRACE_S`` and still lacks the key holds the
        round back, so a key relay in flight does not leave it out; after the grace the round goes on without it."""
        if self.keys is None:
            return False
        now = self.clock()
        return any(not self.keys.holds(p) and now - self.roster.members[p].joined_at < KEY_GRACE_S
                   for p in self.roster.online(now))

    def _record(self, r: OpenRound, decision: RoundDecision) -> None:
        """Store a robust aggregator's verdict and update rejection streaks; quarantine at the configured limit."""
        self.store.save_decisions(self.job_id, [
            FlagView(r.number, r.attempt, pid, pid in decision.accepted, decision.scores[pid],
                     decision.score_name, decision.defence) for pid in (*decision.accepted, *decision.rejected)])
        for pid in self.roster.record_verdict(decision.accepted, decision.rejected):
            self.log.warning("participant quarantined", participant=pid, round=r.number,
                             consecutive_rejections=self.roster.streaks[pid])
        if decision.rejected:
            self.log.info("updates rejected", round=r.number, defence=decision.defence, rejected=list(decision.rejected))
            self.events.updates_rejected(self.job_id, decision.defence, len(decision.rejected))

    # ---- lifecycle ----------------------------------------------------------------------------------
    def cancel(self) -> None:
        """The job was cancelled: an open attempt is closed as failed, without counting."""
        if self.open is not None:
            self.store.save_round(self.open.row(self.job_id, RoundState.FAILED, self.clock(), {"cancelled": 1.0}))
            self.open = None

    def restart_counting(self) -> None:
        """The admin (re)started the job: the current round gets ``max_attempts`` fresh attempts."""
        self.failures = 0

    def restore(self, next_attempt: int, failures: int) -> None:
        """After a coordinator restart (``coordinator.recovery``): no attempt is open."""
        self.open, self.next_attempt, self.failures = None, next_attempt, failures

    def require(self) -> OpenRound:
        """The open attempt; callers reach here only after the upload gate or the loop saw one open."""
        if self.open is None:
            raise StaleRound("no round attempt is open")
        return self.open
