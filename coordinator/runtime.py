"""One job at the coordinator: the thin wiring between its roster (``coordinator.roster``), round machine
(``coordinator.rounds``), upload gate (``coordinator.uploads``), accumulator (``coordinator.accumulators``,
chosen once), key relay (``coordinator.keys``), privacy ledger (``coordinator.privacy``), task dispatch
(``coordinator.tasks``) and admin views (``coordinator.views``).

Every public method is one participant or admin call.  The round machine changes the open attempt's state
in ``RoundMachine.settle`` alone, which runs after any call that can finish an attempt and on every tick;
only ``tick`` opens rounds.  When the rounds ask the job to end or pause (``JobEnd``), this object does.

Global version 0 (the initial prompt) is supplied by the first member to join, so the coordinator never
needs the PLM.  With differential privacy a member whose record-level budget is spent declines its round and
every later selection; the job ends when fewer than ``min_participants`` members have budget left, or before
the participant-level ledger would pass its budget.  With a robust aggregator every verdict is stored, and a
member rejected in ``robust.quarantine_after`` consecutive rounds is quarantined until an admin releases it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from fedprompt.config import SIGNED_CONFIG, JobConfig, member_toml
from fedprompt.coordinator import tasks, views
from fedprompt.coordinator.accumulators import (
    Accumulator,
    EncryptedAccumulator,
    GramAccumulator,
    PlainAccumulator,
    ThresholdAccumulator,
)
from fedprompt.coordinator.aggregation import Aggregator, GramDefence, UniformWeights, job_aggregator
from fedprompt.coordinator.events import RoundEvents
from fedprompt.coordinator.keydoor import KeyDoor
from fedprompt.coordinator.keys import JobKeys
from fedprompt.coordinator.levels import LevelledAccumulator
from fedprompt.coordinator.lifecycle import Lifecycle
from fedprompt.coordinator.offload import Offload, followed, inline
from fedprompt.coordinator.privacy import ParticipantLedger
from fedprompt.coordinator.reports import Reports
from fedprompt.coordinator.roster import Roster
from fedprompt.coordinator.rounds import JobEnd, OpenRound, RoundMachine
from fedprompt.coordinator.store import TERMINAL, JobState, MemberRow, MemberState, Store
from fedprompt.coordinator.threshold import ThresholdKeyRelay, ThresholdRelay
from fedprompt.coordinator.threshold_gramjob import GramThresholdAccumulator, GramThresholdKeyRelay
from fedprompt.coordinator.uploads import Admission, UploadGate, UploadKind
from fedprompt.crypto.audit import Verdict
from fedprompt.crypto.gram import GRAM_ENCODING
from fedprompt.errors import JobStateError, NotFound, PreconditionFailed
from fedprompt.protocol import (
    FlagsView,
    JobDescription,
    JobView,
    JoinInfo,
    Payload,
    PayloadHeader,
    PrivacyReport,
    Task,
)
from fedprompt.wire.bundle import ENCODING as BUNDLE

log = structlog.get_logger("coordinator.runtime")


def choose_accumulator(job_id: str, config: JobConfig, store: Store, keys: JobKeys | None, rule: Aggregator,
                       aggregator: Aggregator, vector_size: Callable[[], int]) -> Accumulator:
    """The one way a job's updates are combined: levelled, plain, encrypted, or encrypted with a decision on
    their Gram matrix (``rule`` is the job's aggregator before any DP wrapper, ``aggregator`` after it)."""
    if isinstance(keys, GramThresholdKeyRelay) and isinstance(rule, GramDefence):
        return GramThresholdAccumulator(keys, vector_size, config.summand_weight, rule, config.he.gram_norm_bound,
                                        config.job.min_participants)
    if isinstance(keys, ThresholdKeyRelay):
        return ThresholdAccumulator(keys, vector_size, config.summand_weight)
    if config.levels.enabled:
        return LevelledAccumulator(job_id, config, store, keys, aggregator)
    if keys is None:
        return PlainAccumulator(aggregator, job_id, store, vector_size)
    if isinstance(rule, GramDefence):
        return GramAccumulator(keys, vector_size, rule)
    return EncryptedAccumulator(keys, vector_size)


def job_keys(job_id: str, config: JobConfig, store: Store, gram: bool) -> JobKeys | None:
    """An encrypted job's key relay: threshold (the n enrolled members' shared key) or single-key."""
    if config.he.threshold_mode:
        members = config.job.allowed_participants
        params = config.he.threshold_params(len(members), gram)
        relay = ThresholdRelay(job_id, members, params)
        return GramThresholdKeyRelay(job_id, relay, store) if gram else ThresholdKeyRelay(job_id, relay, store)
    return JobKeys(job_id, config.he_params(gram), config.he.dealer, store) if config.he.enabled else None


class JobRuntime:
    """One job's live state; every transition is written through to the store."""

    def __init__(self, job_id: str, config: JobConfig, config_toml: str, store: Store,
                 clock: Callable[[], float] = time.time, offline_after_s: float = 120.0, max_attempts: int = 3,
                 offload: Offload = inline, events: RoundEvents | None = None) -> None:
        """``offload`` runs a round's costly homomorphic step (``coordinator.offload``): inline by default;
        ``events`` hears what the rounds do (``coordinator.events``, e.g. for metrics)."""
        self.job_id, self.config, self.config_toml, self.store, self.clock = job_id, config, config_toml, store, clock
        self.public_toml = member_toml(config)  # what participants see, and what the admin signed
        rule = job_aggregator(config)
        self.aggregator = UniformWeights(rule, config.job.min_participants) if config.dp.participant_level else rule
        self.keys = job_keys(job_id, config, store, rule.gram)
        self.accumulator = choose_accumulator(job_id, config, store, self.keys, rule, self.aggregator,
                                              lambda: self.uploads.vector_size)
        self.relay = KeyDoor(self)
        self.roster = Roster(job_id, config.job.allowed_participants, store, offline_after_s,
                             config.robust.quarantine_after if self.aggregator.quarantines else 0)
        self.privacy = ParticipantLedger(job_id, config.dp, store)
        self.rounds = RoundMachine(job_id, config, store, clock, self.roster, self.accumulator, self.keys,
                                   self.privacy, followed(offload, lambda: self._apply(self.rounds.settle())),
                                   max_attempts, events)
        self.uploads = UploadGate(job_id, self.roster, self.rounds, self.accumulator, self.keys, store)
        self.reports = Reports(job_id, store, self.roster, config.dp)
        self.log = log.bind(job_id=job_id)
        self.lifecycle = Lifecycle(job_id, store, self.log)

    @property
    def open(self) -> OpenRound | None:
        return self.rounds.open

    @property
    def vector_size(self) -> int:
        """The exchanged vector's length, fixed by the first member to join (``UploadGate.agree_size``)."""
        return self.uploads.vector_size

    @property
    def levels(self) -> LevelledAccumulator | None:
        return self.accumulator if isinstance(self.accumulator, LevelledAccumulator) else None

    # ---- admin transitions -------------------------------------------------------------------------
    @property
    def state(self) -> JobState:
        return self.lifecycle.state

    def start(self) -> JobState:
        state = self.lifecycle.start()
        if self.keys is not None:
            self.log.info("encrypted aggregation", **self.keys.params.describe())
        self.rounds.restart_counting()
        return state

    def pause(self) -> JobState:
        return self.lifecycle.pause()

    def cancel(self) -> JobState:
        state = self.lifecycle.cancel()
        self.rounds.cancel()
        return state

    def restore(self, state: JobState, reason: str, vector_size: int, members: list[MemberRow],
                evaluated: dict[str, set[int]], streaks: dict[str, int], next_attempt: int, failures: int) -> None:
        """Resume from the store after a coordinator restart (``coordinator.recovery``), no attempt open."""
        self.lifecycle.state, self.lifecycle.reason, self.uploads.vector_size = state, reason, vector_size
        self.roster.restore(members, evaluated, streaks, self.clock())
        self.rounds.restore(next_attempt, failures)

    # ---- participant calls -------------------------------------------------------------------------
    def describe(self, participant_id: str) -> JobDescription:
        self.roster.check_allowed(participant_id)
        signed = self.store.attestations(self.job_id, SIGNED_CONFIG)
        return JobDescription(self.job_id, self.config.job.name, self.public_toml, self.aggregator.gram,
                              next(iter(signed.values()), b""))

    def join(self, participant_id: str, num_train: int, num_test: int, vector_size: int,
             exchange_public_key: bytes = b"", attestation: bytes = b"") -> JoinInfo:
        self.roster.check_allowed(participant_id)
        if self.state in TERMINAL:
            raise JobStateError(f"job {self.job_id} is {self.state.value}; it takes no new participants")
        self.roster.check_counts(num_train, num_test)
        self.uploads.agree_size(vector_size)
        deal = self.keys.register(participant_id, exchange_public_key, attestation) if self.keys else False
        self.roster.join(participant_id, num_train, num_test, self.clock())
        provide = self.latest_version() is None and self.roster.initialiser == participant_id
        self.log.info("participant joined", participant=participant_id, num_train=num_train, provides_initial=provide,
                      deals_keys=deal)
        return JoinInfo(self.job_id, participant_id, provide, deal)

    def next_task(self, participant_id: str) -> Task:
        return tasks.next_task(self, participant_id)

    def heartbeat(self, participant_id: str) -> JobState:
        """A sign of life between calls (e.g. while training): keeps the caller online for selection."""
        self.roster.touch(participant_id, self.clock())
        return self.state

    # ---- uploads ------------------------------------------------------------------------------------
    def admit(self, participant_id: str, header: PayloadHeader) -> Admission:
        """Check an upload's header before any chunk is read (``coordinator.uploads``)."""
        with self.rounds.events.refusing(self.job_id):
            return self.uploads.admit(participant_id, header)

    def submit(self, participant_id: str, payload: Payload) -> None:
        """The in-process door for a whole payload: admit its header, then accept it."""
        self.accept(self.admit(participant_id, payload.header(max(1, len(payload.data)))), payload)

    def accept(self, admission: Admission, payload: Payload) -> None:
        """Take a complete, digest-checked payload admitted earlier; an attempt whose last update arrived closes."""
        with self.rounds.events.refusing(self.job_id):
            self.uploads.recheck(admission)
        pid = admission.participant_id
        if admission.kind is UploadKind.EVALUATION_KEYS:
            assert self.keys is not None
            self.keys.publish_evaluation_keys(pid, payload.data)
        elif admission.kind is UploadKind.INITIAL:
            self.accumulator.check_initial(payload)
            self.store.save_prompt(self.job_id, 0, self.accumulator.encoding, payload.data)
            self.log.info("initial prompt stored", participant=pid, encoding=self.accumulator.encoding)
        else:
            r = self.rounds.require()
            with self.rounds.events.refusing(self.job_id):
                r.fold.add(pid, payload)
            self.rounds.report(pid, payload.num_examples, len(payload.data))
            self.store.record_update(self.job_id, r.number, r.attempt, pid, payload.num_examples, len(payload.data),
                                     admission.header.sha256.hex())
            self.log.info("update accepted", participant=pid, round=r.number, reported=len(r.reported),
                          selected=len(r.selected))
            self._apply(self.rounds.settle())
            return
        self.tick()

    def expel(self, participant_id: str, why: str) -> None:
        """Drop a member (e.g. its certificate was revoked): its in-flight update is discarded where the fold
        can give it back, it is no longer selected, and it must join again (with a valid identity)."""
        if participant_id not in self.roster.members:
            return
        self.roster.set_state(participant_id, MemberState.REVOKED)
        r = self.rounds.open
        reported = r is not None and participant_id in r.reported
        withdrawn = self.rounds.withdraw(participant_id)
        self.log.warning("member expelled", participant=participant_id, reason=why,
                         **({"round": r.number, "update_discarded": reported} if r is not None and withdrawn else {}))
        if withdrawn:
            self._apply(self.rounds.settle())

    # ---- downloads and reports ----------------------------------------------------------------------
    def global_payload(self, participant_id: str | None, version: int | None) -> Payload:
        """A stored global version (``None``: the latest) for a member, or for an admin export (no member)."""
        if participant_id is not None:
            self.roster.touch(participant_id, self.clock())
        elif refusal := self.accumulator.export_refusal(self.job_id):
            raise PreconditionFailed(refusal)
        if version is None:
            version = self.latest_version()
            if version is None:
                raise NotFound(f"job {self.job_id} has no global version yet")
        payload = self.stored_payload(version)
        if participant_id is not None:
            payload = self.accumulator.view(participant_id, payload)
            self.rounds.served(version, len(payload.data))
        return payload

    def stored_payload(self, version: int) -> Payload:
        """A global version exactly as stored (ciphertexts for encrypted jobs), e.g. for checkpoints."""
        stored = self.store.prompt(self.job_id, version)
        if stored is None:
            raise NotFound(f"job {self.job_id} has no global version {version}")
        return Payload(self.job_id, version, stored[0], self.vector_size, stored[1])

    def report_metrics(self, participant_id: str, version: int, metrics: dict[str, float], num_examples: int) -> None:
        self.reports.metrics(participant_id, version, metrics, num_examples, self.clock())

    def report_privacy(self, participant_id: str, report: PrivacyReport) -> None:
        """Store a record-level privacy report; a declining participant leaves the round and later selections."""
        r = self.rounds.open
        if not self.reports.privacy(participant_id, report, r.number if r else (self.latest_version() or 0),
                                    self.clock()):
            return
        self.log.warning("participant declined to train", participant=participant_id, round=report.round,
                         reason=report.reason)
        if r is not None and participant_id not in r.reported and self.rounds.withdraw(participant_id):
            self._apply(self.rounds.settle())

    def gram_payload(self, participant_id: str, round_: int) -> Payload:
        """The packed Gram ciphertext of round ``round_``, for its two decryptors only."""
        self.roster.touch(participant_id, self.clock())
        gram = self.rounds.decrypting(round_)
        return Payload(self.job_id, round_, GRAM_ENCODING, len(gram.order), gram.request(participant_id))

    def report_gram(self, participant_id: str, round_: int, scalars: list[float]) -> None:
        """A decryptor's Gram scalars; once both are in, the round decides."""
        self.roster.touch(participant_id, self.clock())
        self.rounds.decrypting(round_).answer(participant_id, scalars)
        self._apply(self.rounds.settle())

    def check_bundle(self, participant_id: str, round_: int) -> Payload:
        """What round ``round_``'s two checkers must check (``coordinator.checks``), for them only."""
        self.roster.touch(participant_id, self.clock())
        return Payload(self.job_id, round_, BUNDLE, 0, self.rounds.checking(round_).request(participant_id))

    def report_check(self, participant_id: str, round_: int, verdicts: list[Verdict]) -> None:
        """A checker's verdicts; once both are in, the round stores its aggregate or finds the culprits."""
        self.roster.touch(participant_id, self.clock())
        self.rounds.checking(round_).answer(participant_id, verdicts)
        self._apply(self.rounds.settle())

    # ---- time -------------------------------------------------------------------------------------
    def tick(self) -> None:
        """Time passes: the rounds settle the open attempt and open the next one when due."""
        self._apply(self.rounds.tick(self.state is JobState.RUNNING))

    def _apply(self, end: JobEnd | None) -> None:
        if end is not None:
            self.lifecycle.set(end.state, end.reason)

    # ---- state and views ----------------------------------------------------------------------------
    def online(self) -> list[str]:
        return self.roster.online(self.clock())

    def latest_version(self) -> int | None:
        return self.store.latest_version(self.job_id)

    def release(self, participant_id: str) -> str:
        """Admin: lift a quarantine (``Roster.release``)."""
        return self.roster.release(participant_id).value

    @property
    def phase(self) -> str:
        return tasks.phase(self)

    def view(self) -> JobView:
        return views.job_view(self)

    def flags(self) -> FlagsView:
        return views.flags(self)
