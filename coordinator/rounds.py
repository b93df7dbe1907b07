"""The round state machine of one job: waiting -> training -> aggregating -> done, round after round.

A round opens once the job runs, the previous global version exists and at least ``min_participants``
members are online; it selects up to ``participants_per_round`` of them (seeded by job seed, round and
attempt), collects their updates, and aggregates when all selected reported, or at the deadline if at least
``min_participants`` did.  Below the minimum at the deadline the round is retried with a fresh selection,
and after ``max_attempts`` such failures the job pauses with the reason in its status; starting it again
gives the round ``max_attempts`` more.  A coordinator restart is no failure of the round (it does not count),
and attempt numbers never repeat within a round, so each attempt draws a new selection and keeps its row.

With differential privacy on (``[dp]``), a participant whose record-level budget would be exceeded declines
its round (``report_privacy``); it is dropped from the round and from every later selection, and the job
ends when fewer than ``min_participants`` members have budget left.  With participant-level DP, updates
count equally, a round aggregates only with at least ``min_participants`` noise shares, and the job ends
before the participant-level ledger would pass its budget (``coordinator.privacy``).

With a robust aggregator every round's decision (who was kept, who rejected, each score) is stored; a
participant rejected in ``robust.quarantine_after`` consecutive rounds it took part in is quarantined: it is
skipped in selection until an admin releases it.

Global version ``v`` is the prompt after ``v`` aggregated rounds; version 0 (the initial prompt) is
supplied by the first participant to join, so the coordinator never needs the PLM.  Every member
evaluates each new global version on its local test split and reports metrics.

Encrypted jobs (``he.enabled``) keep the same machine with three differences: only members holding the job
key (``coordinator.keys``) are selected; each update is validated under the job's public context and folded
into the round's running encrypted sum on arrival (memory independent of the number of updates); and the
stored global versions are encrypted: version 0 is the encrypted initial prompt and version ``v`` the
encrypted aggregate (``sum n_i * delta_i`` and ``sum n_i``) of round ``v``.  Key holders rebuild the
global prompt as ``prompt_0 + sum_v aggregate_v / weight_v``; the coordinator never sees it.

Encrypted jobs with a Gram defence (``job.aggregator`` in ``GRAM_AGGREGATORS``) keep each update's
ciphertexts instead of folding them; when the round closes the coordinator computes their encrypted Gram
matrix (on a worker thread in the server, ``coordinator.offload``, so the step does not stall other calls),
gives two key holders a DECRYPT task, and decides once both answered alike (``coordinator.hegram``):
the same ``GramDefence.judge`` as the plaintext path, then only the accepted ciphertexts are summed.  If the
decryptors disagree, or do not answer before the deadline, the attempt fails without a decision.

Jobs with prompt levels (``[levels]``) hand updates, aggregation and downloads to ``coordinator.levels``:
the global level is aggregated over everyone, the expert level per cohort, and each member downloads the
global part with its own cohort's expert part.  An encrypted levelled job that discovers its cohorts runs
its discovery round through the same encrypted-Gram steps (two decryptors, agreement), then clusters; if
the Gram matrix cannot be had or trusted, discovery is postponed and the round still aggregates.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import structlog

from fedprompt.config import JobConfig, dump_toml
from fedprompt.coordinator.aggregation import AggregateResult, Contribution, GramDefence, UniformWeights, job_aggregator
from fedprompt.coordinator.hegram import DECRYPTORS, GramRound
from fedprompt.coordinator.keys import JobKeys
from fedprompt.coordinator.levels import JobLevels
from fedprompt.coordinator.offload import Offload, inline
from fedprompt.coordinator.privacy import ParticipantLedger, check_report, record_summary
from fedprompt.coordinator.store import MemberRow, RoundRow, Store
from fedprompt.crypto.ckks import ENCODING as CKKS
from fedprompt.crypto.ckks import EncryptedSum
from fedprompt.crypto.gram import EVALUATION_KEYS, GRAM_ENCODING
from fedprompt.errors import (
    DecryptorDisagreement,
    DuplicateUpdate,
    InvalidRequest,
    InvalidUpdate,
    JobStateError,
    NotEnrolled,
    NotFound,
    NotSelected,
    PreconditionFailed,
    RobustAssumptionError,
    StaleRound,
)
from fedprompt.protocol import (
    FlagsView,
    FlagView,
    JobDescription,
    JobView,
    JoinInfo,
    KeyState,
    Payload,
    PayloadHeader,
    PrivacyReport,
    RoundView,
    Task,
    TaskKind,
)
from fedprompt.wire.payload import FLOAT32, decode_vector

log = structlog.get_logger("coordinator.rounds")

MAX_METRICS = 32
MAX_METRIC_NAME = 64
MAX_EXAMPLES = 1_000_000_000
MAX_VECTOR_SIZE = 16 * 1024 * 1024
#: Encrypted jobs: how long a newly joined member without the key holds back the next round (key relay in flight).
KEY_GRACE_S = 30.0
#: An encrypted round keeps who contributed and with what weight; the values live only in the encrypted sum.
NO_PLAINTEXT = np.empty(0, dtype=np.float32)
ACTIVE = "active"
EXHAUSTED = "budget_exhausted"  # member state: declined to train, its record-level privacy budget is spent
QUARANTINED = "quarantined"


class JobState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


TERMINAL = (JobState.DONE, JobState.CANCELLED, JobState.FAILED)


class RoundState(enum.Enum):
    TRAINING = "training"
    AGGREGATING = "aggregating"
    DONE = "done"
    FAILED = "failed"


@dataclass
class OpenRound:
    number: int
    attempt: int
    selected: tuple[str, ...]
    opened_at: float
    deadline: float
    sample_rate: float = 1.0
    contributions: dict[str, Contribution] = field(default_factory=dict)
    encrypted: EncryptedSum | None = None
    gram: GramRound | None = None
    bytes_up: int = 0
    bytes_down: int = 0

    def row(self, job_id: str, state: RoundState, closed_at: float = 0.0,
            summary: dict[str, float] | None = None) -> RoundRow:
        return RoundRow(job_id, self.number, self.attempt, state.value, self.selected, self.opened_at,
                        self.deadline, closed_at, self.bytes_up, self.bytes_down, summary or {})


class JobRuntime:
    """One job's live state; every transition is written through to the store."""

    def __init__(
        self,
        job_id: str,
        config: JobConfig,
        config_toml: str,
        store: Store,
        clock: Callable[[], float] = time.time,
        offline_after_s: float = 120.0,
        max_attempts: int = 3,
        offload: Offload = inline,
    ) -> None:
        """``offload`` runs the round's costly homomorphic step (``coordinator.offload``): inline unless a
        server passes its worker thread."""
        self.job_id = job_id
        self.config = config
        self.config_toml = config_toml
        # What participants see: the job without its allow-list, so no member learns who else may join.
        self.public_toml = dump_toml(dataclasses.replace(config, job=dataclasses.replace(
            config.job, allowed_participants=()), levels=dataclasses.replace(config.levels, cohorts=())))
        self.store = store
        self.clock = clock
        self.offline_after_s = offline_after_s
        self.max_attempts = max_attempts
        self.offload = offload
        self.aggregator = job_aggregator(config)
        self.keys = JobKeys(job_id, config.he_params(), config.he.dealer, store) if config.he.enabled else None
        self.encoding = CKKS if self.keys is not None else FLOAT32
        # Prompt levels (PLMM): updates and versions become level containers, aggregated level by level.
        self.levels = JobLevels(job_id, config, store, self.keys) if config.levels.enabled else None
        if self.levels is not None:
            self.encoding = self.levels.encoding
        if config.dp.participant_level:
            self.aggregator = UniformWeights(self.aggregator, config.job.min_participants)
        self.privacy = ParticipantLedger(job_id, config.dp, store)
        self.state = JobState.CREATED
        self.reason = ""
        self.vector_size = 0
        self.members: dict[str, MemberRow] = {}
        self.initialiser: str | None = None
        self.open: OpenRound | None = None
        self.next_attempt = 1
        self.failures = 0  # failed attempts of the current round since the job (re)started
        self.evaluated: dict[str, set[int]] = {}
        self.version_downloads: dict[int, int] = {}
        self._decoded_global: tuple[int, np.ndarray] | None = None
        self.streaks: dict[str, int] = {}
        self.log = log.bind(job_id=job_id)

    # ---- admin transitions -------------------------------------------------------------------------
    def start(self) -> JobState:
        if self.state not in (JobState.CREATED, JobState.PAUSED):
            raise JobStateError(f"job {self.job_id} is {self.state.value}; only created or paused jobs can start")
        self._set_state(JobState.RUNNING)
        if self.keys is not None:
            params = self.keys.params
            self.log.info("encrypted aggregation", **params.describe())
        self.failures = 0
        return self.state

    def pause(self) -> JobState:
        if self.state is not JobState.RUNNING:
            raise JobStateError(f"job {self.job_id} is {self.state.value}; only running jobs can pause")
        self._set_state(JobState.PAUSED, "paused by admin")
        return self.state

    def cancel(self) -> JobState:
        if self.state in TERMINAL:
            raise JobStateError(f"job {self.job_id} is already {self.state.value}")
        if self.open is not None:
            self.store.save_round(self.open.row(self.job_id, RoundState.FAILED, self.clock(), {"cancelled": 1.0}))
            self.open = None
        self._set_state(JobState.CANCELLED, "cancelled by admin")
        return self.state

    def _set_state(self, state: JobState, reason: str = "") -> None:
        self.log.info("job state", old=self.state.value, new=state.value, reason=reason)
        self.state = state
        self.reason = reason
        self.store.set_job_state(self.job_id, state.value, reason)

    # ---- participant calls -------------------------------------------------------------------------
    def check_allowed(self, participant_id: str) -> None:
        """Enrollment: only identities on the job's allow-list (or any, with ``"*"``) may see or join it."""
        allowed = self.config.job.allowed_participants
        if participant_id not in allowed and "*" not in allowed:
            raise NotEnrolled(f"{participant_id} is not on the allow-list of job {self.job_id}")

    def describe(self, participant_id: str) -> JobDescription:
        self.check_allowed(participant_id)
        return JobDescription(self.job_id, self.config.job.name, self.public_toml)

    def join(self, participant_id: str, num_train: int, num_test: int, vector_size: int,
             exchange_public_key: bytes = b"") -> JoinInfo:
        self.check_allowed(participant_id)
        if self.state in TERMINAL:
            raise JobStateError(f"job {self.job_id} is {self.state.value}; it takes no new participants")
        if not 1 <= num_train <= MAX_EXAMPLES:
            raise InvalidRequest(f"num_train_examples must be in [1, {MAX_EXAMPLES}]")
        if not 0 <= num_test <= MAX_EXAMPLES:
            raise InvalidRequest(f"num_test_examples must be in [0, {MAX_EXAMPLES}]")
        if not 1 <= vector_size <= MAX_VECTOR_SIZE:
            raise InvalidRequest(f"vector_size must be in [1, {MAX_VECTOR_SIZE}]")
        if self.vector_size == 0:
            self.vector_size = vector_size
            self.store.set_vector_size(self.job_id, vector_size)
        elif vector_size != self.vector_size:
            raise InvalidUpdate(f"your model yields {vector_size} prompt parameters, this job uses {self.vector_size}; "
                                "check the model and prompt length")
        deal = self.keys.register(participant_id, exchange_public_key) if self.keys is not None else False
        now = self.clock()
        previous = self.members.get(participant_id)
        # budgets never reset, and a quarantine outlives a re-join
        keep = (EXHAUSTED, QUARANTINED)
        state = previous.state if previous is not None and previous.state in keep else ACTIVE
        row = MemberRow(self.job_id, participant_id, num_train, num_test, previous.joined_at if previous else now,
                        now, state)
        self.members[participant_id] = row
        self.store.upsert_member(row)
        self.evaluated.setdefault(participant_id, set())
        if self.initialiser is None:
            self.initialiser = participant_id
        provide = self.latest_version() is None and self.initialiser == participant_id
        self.log.info("participant joined", participant=participant_id, num_train=num_train, provides_initial=provide,
                      deals_keys=deal)
        return JoinInfo(self.job_id, participant_id, provide, deal)

    # ---- encrypted jobs: the key relay -------------------------------------------------------------
    def _require_keys(self) -> JobKeys:
        if self.keys is None:
            raise PreconditionFailed(f"job {self.job_id} is not encrypted (he.enabled is false)")
        return self.keys

    def publish_context(self, participant_id: str, public_context: bytes, key_id: bytes) -> None:
        self._member(participant_id)
        self._require_keys().publish(participant_id, public_context, key_id)

    def share_key(self, participant_id: str, recipient_id: str, sealed_key: bytes) -> None:
        self._member(participant_id)
        self._require_keys().share(participant_id, recipient_id, sealed_key)

    def key_state(self, participant_id: str) -> KeyState:
        self._member(participant_id)
        return self._require_keys().state_for(participant_id, lambda p: p in self.online())

    def _member(self, participant_id: str) -> MemberRow:
        member = self.members.get(participant_id)
        if member is None or member.state == "revoked":
            raise NotEnrolled(f"{participant_id} has not joined job {self.job_id}")
        self.members[participant_id] = dataclasses.replace(member, last_seen=self.clock())
        return member

    def next_task(self, participant_id: str) -> Task:
        """The caller's next task: evaluate the newest global version first, then train if selected."""
        self._member(participant_id)
        if self.state in (JobState.CANCELLED, JobState.FAILED):
            return Task(TaskKind.DONE, reason=f"job {self.state.value}: {self.reason}")
        if self.keys is not None and not self.keys.holds(participant_id):
            return Task(TaskKind.WAIT, reason="waiting for a key holder to share the job key")
        if self.open is not None and self.open.gram is not None and self.open.gram.awaiting(participant_id):
            return Task(TaskKind.DECRYPT, round=self.open.number, deadline=self.open.deadline)
        latest = self.latest_version()
        if latest is None:
            return Task(TaskKind.WAIT, reason="waiting for the initial prompt")
        if latest not in self.evaluated[participant_id]:
            return Task(TaskKind.EVALUATE, global_version=latest)
        if self.members[participant_id].state == QUARANTINED and self.state is not JobState.DONE:
            return Task(TaskKind.WAIT, reason="quarantined after repeated rejected updates; an admin must release it")
        r = self.open
        if r is not None and participant_id in r.selected and participant_id not in r.contributions:
            if self.clock() < r.deadline:
                return Task(TaskKind.TRAIN, round=r.number, global_version=r.number - 1, deadline=r.deadline)
        if self.state is JobState.DONE:
            return Task(TaskKind.DONE, reason="all rounds completed")
        return Task(TaskKind.WAIT, reason=self.phase)

    @property
    def phase(self) -> str:
        """Human-readable position in the round state machine."""
        if self.state is not JobState.RUNNING:
            return f"job {self.state.value}"
        if self.open is None:
            return f"waiting for {self.config.job.min_participants} online participants"
        if self.open.gram is not None and self.open.gram.started and not self.open.gram.computed:
            return f"round {self.open.number} computing its encrypted Gram matrix ({len(self.open.gram.order)} updates)"
        if self.open.gram is not None and self.open.gram.started:
            waiting = [p for p in self.open.gram.decryptors if self.open.gram.awaiting(p)]
            return f"round {self.open.number} deciding: Gram matrix with decryptors {', '.join(waiting)}"
        return f"round {self.open.number} training ({len(self.open.contributions)}/{len(self.open.selected)} reported)"

    def check_header(self, participant_id: str, header: PayloadHeader) -> int:
        """Validate an upload's header before any chunk is read; returns the byte limit for its payload."""
        self._member(participant_id)
        if header.job_id != self.job_id:
            raise NotFound(f"header names job {header.job_id[:80]!r}, the stream is for {self.job_id}")
        if header.encoding == EVALUATION_KEYS:
            return self._require_keys().check_evaluation_keys(participant_id)
        if header.encoding != self.encoding:
            raise InvalidUpdate(f"encoding {header.encoding[:40]!r} is not accepted by this job (expects {self.encoding!r})")
        if header.vector_size != self.vector_size:
            raise InvalidUpdate(f"update has {header.vector_size} parameters, expected {self.vector_size}")
        if header.round == 0:
            if self.latest_version() is not None:
                raise StaleRound("the initial prompt was already provided")
            if participant_id != self.initialiser:
                raise NotSelected(f"the initial prompt comes from {self.initialiser}, not {participant_id}")
            return self._max_bytes()
        r = self.open
        if r is None or header.round != r.number:
            current = "none" if r is None else str(r.number)
            raise StaleRound(f"update for round {header.round}, the open round is {current}")
        if participant_id not in r.selected:
            raise NotSelected(f"{participant_id} is not selected for round {r.number}")
        if participant_id in r.contributions:
            raise DuplicateUpdate(f"{participant_id} already submitted for round {r.number}")
        if r.gram is not None and r.gram.started:
            raise StaleRound(f"round {r.number} is deciding on its encrypted Gram matrix; it takes no more updates")
        if self.clock() > r.deadline:
            raise StaleRound(f"round {r.number} deadline has passed")
        if header.num_examples < 1:
            raise InvalidUpdate("num_examples must be >= 1")
        if header.num_examples > self.members[participant_id].num_train:
            raise InvalidUpdate(f"num_examples {header.num_examples} exceeds the {self.members[participant_id].num_train} "
                                "training examples declared at join")
        return self._max_bytes()

    def _max_bytes(self) -> int:
        """The largest payload this job accepts: a float32 vector, or its encryption under the job's context."""
        if self.levels is not None:
            return self.levels.max_bytes(self.vector_size)
        if self.keys is None:
            return 4 * self.vector_size
        return self.keys.require_context().expected_size(self.vector_size)

    def submit(self, participant_id: str, payload: Payload) -> None:
        """Accept a complete, digest-checked payload; aggregates at once when the last selected one arrives."""
        header = payload.header(max(1, len(payload.data)))
        self.check_header(participant_id, header)
        if payload.encoding == EVALUATION_KEYS:
            self._require_keys().publish_evaluation_keys(participant_id, payload.data)
            self.tick()
            return
        r = self.open
        if self.levels is not None:
            vector = self.levels.accept(participant_id, payload, r)
        elif self.keys is not None:
            # Validate completely (job key id, chunk count, parse under this job's context) before folding.
            context = self.keys.require_context()
            if payload.round == 0:
                context.parse(payload.data, context.key_id, self.vector_size)
            elif r is not None and r.gram is not None:
                r.gram.add(participant_id, r.gram.parse(payload.data), payload.num_examples)
            else:
                assert r is not None and r.encrypted is not None  # check_header guarantees an open round
                r.encrypted.add(r.encrypted.parse(payload.data))
            vector = NO_PLAINTEXT
        else:
            vector = decode_vector(payload, self.vector_size)
            if r is not None and payload.round > 0:
                self.aggregator.check(self._global_vector(r.number - 1), vector)
        if payload.round == 0:
            self.store.save_prompt(self.job_id, 0, self.encoding, payload.data)
            self.log.info("initial prompt stored", participant=participant_id, encoding=self.encoding)
            self.tick()
            return
        assert r is not None  # check_header guarantees an open round for round > 0
        r.contributions[participant_id] = Contribution(participant_id, payload.num_examples, vector)
        r.bytes_up += len(payload.data)
        self.store.record_update(self.job_id, r.number, r.attempt, participant_id, payload.num_examples,
                                 len(payload.data), header.sha256.hex())
        self.log.info("update accepted", participant=participant_id, round=r.number,
                      reported=len(r.contributions), selected=len(r.selected))
        if len(r.contributions) == len(r.selected):
            self._aggregate()

    def expel(self, participant_id: str, why: str) -> None:
        """Drop a member (e.g. its certificate was revoked): its in-flight update is discarded, it is no longer
        selected, and it must join again (with a valid identity) to take part."""
        member = self.members.get(participant_id)
        if member is None:
            return
        self.members[participant_id] = dataclasses.replace(member, state="revoked")
        self.store.upsert_member(self.members[participant_id])
        r = self.open
        if r is not None and participant_id in r.selected:
            discarded = r.contributions.pop(participant_id, None)
            if r.gram is not None and not r.gram.started:
                r.gram.discard(participant_id)
            r.selected = tuple(p for p in r.selected if p != participant_id)
            self.store.save_round(r.row(self.job_id, RoundState.TRAINING))
            self.log.warning("member expelled", participant=participant_id, round=r.number, reason=why,
                             update_discarded=discarded is not None)
            if r.selected and len(r.contributions) == len(r.selected):
                self._aggregate()
        else:
            self.log.warning("member expelled", participant=participant_id, reason=why)

    def already_received(self, participant_id: str, header: PayloadHeader) -> bool:
        """True if this exact update (same digest) already counts for its round: a retry whose answer was lost.

        Only the attempt that counts is consulted (the open one, or the one that completed), so an update
        lost with a crashed attempt is taken again, and a *different* second update still gets DuplicateUpdate.
        """
        if header.job_id != self.job_id:
            return False
        if header.round == 0:
            stored = self.store.prompt(self.job_id, 0)
            return (participant_id == self.initialiser and stored is not None
                    and hashlib.sha256(stored[1]).digest() == header.sha256)
        digests = self.store.received_digests(self.job_id, header.round, participant_id)
        if not digests:
            return False
        if self.open is not None and self.open.number == header.round:
            counting = {self.open.attempt}
        else:
            counting = {r.attempt for r in self.store.rounds(self.job_id)
                        if r.round == header.round and r.state == RoundState.DONE.value}
        return any(digests.get(a) == header.sha256.hex() for a in counting)

    def heartbeat(self, participant_id: str) -> JobState:
        """A sign of life between calls (e.g. while training): keeps the caller online for selection."""
        self._member(participant_id)
        return self.state

    def global_payload(self, participant_id: str | None, version: int | None) -> Payload:
        """A stored global version, ``None`` the latest (``participant_id`` None for admin export); counts
        bytes down."""
        if participant_id is not None:
            self._member(participant_id)
        elif self.keys is not None:
            raise PreconditionFailed(f"job {self.job_id} is encrypted: the coordinator holds no decrypted prompt; "
                                     "every key holder writes it to its state directory (prompt-latest.safetensors)")
        elif self.levels is not None:
            raise PreconditionFailed(f"job {self.job_id} uses prompt levels: there is no single prompt to export (each "
                                     "member's adds its cohort's expert level and its own personal level)")
        if version is None:
            latest = self.latest_version()
            if latest is None:
                raise NotFound(f"job {self.job_id} has no global version yet")
            version = latest
        payload = self.stored_payload(version)
        if participant_id is not None and self.levels is not None:
            payload = self.levels.view(participant_id, payload)  # the global part and the member's cohort's
        if participant_id is not None:
            self.version_downloads[version] = self.version_downloads.get(version, 0) + len(payload.data)
        return payload

    def stored_payload(self, version: int) -> Payload:
        """A global version exactly as stored (ciphertexts for encrypted jobs), e.g. for checkpoints."""
        stored = self.store.prompt(self.job_id, version)
        if stored is None:
            raise NotFound(f"job {self.job_id} has no global version {version}")
        encoding, data = stored
        return Payload(self.job_id, version, encoding, self.vector_size, data)

    def report_metrics(self, participant_id: str, version: int, metrics: dict[str, float], num_examples: int) -> None:
        member = self._member(participant_id)
        latest = self.latest_version()
        if latest is None or not 0 <= version <= latest:
            raise NotFound(f"job {self.job_id} has no global version {version}")
        if version in self.evaluated[participant_id]:
            raise DuplicateUpdate(f"{participant_id} already reported metrics on version {version}")
        if len(metrics) > MAX_METRICS or not all(math.isfinite(v) for v in metrics.values()):
            raise InvalidRequest(f"metrics must be at most {MAX_METRICS} finite values")
        if not all(0 < len(k) <= MAX_METRIC_NAME and k.isprintable() for k in metrics):
            raise InvalidRequest(f"metric names must be 1-{MAX_METRIC_NAME} printable characters")
        if not 0 <= num_examples <= member.num_test:
            raise InvalidRequest(f"num_examples {num_examples} is outside [0, {member.num_test}] (test examples "
                                 "declared at join)")
        self.store.save_metrics(self.job_id, version, participant_id, num_examples, metrics)
        self.evaluated[participant_id].add(version)

    def report_privacy(self, participant_id: str, report: PrivacyReport) -> None:
        """Store a record-level privacy report; a declining participant leaves the round and later selections."""
        self._member(participant_id)
        if report.job_id != self.job_id:
            raise NotFound(f"report names job {report.job_id!r}, this is {self.job_id}")
        if not self.config.dp.enabled:
            raise InvalidUpdate(f"job {self.job_id} does not use differential privacy")
        r = self.open
        current = r.number if r is not None else (self.latest_version() or 0)
        if not 1 <= report.round <= current:
            raise StaleRound(f"privacy report for round {report.round}, the current round is {current}")
        self.store.save_privacy_report(self.job_id, check_report(participant_id, report))
        if not report.declined:
            return
        member = dataclasses.replace(self.members[participant_id], state=EXHAUSTED)
        self.members[participant_id] = member
        self.store.upsert_member(member)
        self.log.warning("participant declined to train", participant=participant_id, round=report.round,
                         reason=report.reason)
        if r is None or participant_id not in r.selected or participant_id in r.contributions:
            return
        r.selected = tuple(p for p in r.selected if p != participant_id)
        self.store.save_round(r.row(self.job_id, RoundState.TRAINING))
        if len(r.selected) < self.config.job.min_participants:
            self._fail_attempt(f"{participant_id} declined (privacy budget) leaving {len(r.selected)} selected, "
                               f"minimum {self.config.job.min_participants}")
        elif len(r.contributions) == len(r.selected):
            self._aggregate()

    # ---- time-driven transitions -------------------------------------------------------------------
    def tick(self) -> None:
        """Open a round when one is due; close the open round at its deadline."""
        now = self.clock()
        r = self.open
        if r is not None and now >= r.deadline:
            if r.gram is not None and r.gram.started and not r.gram.computed:
                self._gram_failed(r, "the encrypted Gram matrix was not computed before the deadline")
            elif r.gram is not None and r.gram.started:
                self._gram_failed(r, f"Gram decryptors {', '.join(p for p in r.gram.decryptors if r.gram.awaiting(p))} "
                                     "did not answer before the deadline")
            elif len(r.contributions) >= self.config.job.min_participants:
                self._aggregate()
            else:
                self._fail_attempt(f"deadline passed with {len(r.contributions)} of {len(r.selected)} updates, "
                                   f"minimum {self.config.job.min_participants}")
        latest = self.latest_version()
        if (self.state is JobState.RUNNING and self.open is None and latest is not None
                and latest < self.config.job.rounds):
            self._open_round(latest + 1)

    def online(self) -> list[str]:
        cutoff = self.clock() - self.offline_after_s
        return sorted(p for p, m in self.members.items() if m.state == ACTIVE and m.last_seen >= cutoff)

    def _open_round(self, number: int) -> None:
        with_budget = sum(1 for m in self.members.values() if m.state == ACTIVE)
        if with_budget < len(self.members) and with_budget < self.config.job.min_participants:
            self._set_state(JobState.DONE, f"only {with_budget} participants have privacy budget left, minimum "
                                           f"{self.config.job.min_participants}")
            return
        eligible = [p for p in self.online() if self.keys is None or self.keys.holds(p)]
        if (len(eligible) < self.config.job.min_participants or self._awaiting_keys()
                or (self.keys is not None and not self.keys.ready())):
            return
        k = min(self.config.job.participants_per_round, len(eligible))
        refusal = self.privacy.refusal(k / len(eligible))
        if refusal:
            self._set_state(JobState.DONE, refusal)
            return
        rng = random.Random(f"{self.config.job.seed}:{number}:{self.next_attempt}")
        selected = tuple(sorted(rng.sample(eligible, k)))
        now = self.clock()
        self.open = OpenRound(number, self.next_attempt, selected, now, now + self.config.job.round_deadline_s,
                              k / len(eligible),
                              encrypted=self.keys.new_sum(self.vector_size) if self.keys is not None and not
                              self.config.encrypted_gram and self.levels is None else None,
                              gram=self.keys.new_gram_round(self.vector_size) if self.keys is not None and
                              self._needs_gram(number) else None)
        self.store.save_round(self.open.row(self.job_id, RoundState.TRAINING))
        self.log.info("round opened", round=number, attempt=self.next_attempt, selected=list(selected))

    def _needs_gram(self, number: int) -> bool:
        """Encrypted rounds that compute a Gram matrix: all of a Gram defence's, a levelled job's discovery round."""
        return self.config.encrypted_gram or (self.levels is not None and self.levels.needs_gram(number))

    def _awaiting_keys(self) -> bool:
        """Encrypted jobs: an online member that joined within ``KEY_GRACE_S`` and still lacks the key holds the
        round back, so a key relay in flight does not leave it out; after the grace the round goes on without it."""
        if self.keys is None:
            return False
        now = self.clock()
        return any(not self.keys.holds(p) and now - self.members[p].joined_at < KEY_GRACE_S for p in self.online())

    def _aggregate(self) -> None:
        r = self.open
        assert r is not None
        r.bytes_down = self.version_downloads.get(r.number - 1, 0)  # the global this round trained from
        self.store.save_round(r.row(self.job_id, RoundState.AGGREGATING))
        if r.gram is not None:
            if not r.gram.started:
                self._begin_gram(r)
            return
        if self.levels is not None:
            self._aggregate_levels(r)
            return
        if r.encrypted is not None:
            data, metrics = r.encrypted.to_bytes(), {}
        else:
            current = self._global_vector(r.number - 1)
            try:
                result = self.aggregator.aggregate(current, list(r.contributions.values()))
            except RobustAssumptionError as exc:
                self._fail_attempt(f"{self.aggregator.name} refused: {exc}")
                return
            if not np.isfinite(result.vector).all():
                self._fail_attempt("aggregate is not finite")
                return
            data, metrics = result.vector.astype("<f4").tobytes(), result.metrics
            self._record_decision(r, result)
        self._complete(r, data, metrics)

    def _aggregate_levels(self, r: OpenRound, gram: np.ndarray | None = None, postponed: str = "") -> None:
        """Aggregate a levelled round (``coordinator.levels``); an encrypted discovery round passes its agreed
        Gram matrix or why it has none."""
        assert self.levels is not None
        outcome = self.levels.aggregate(r, self.aggregator, gram, postponed)
        if outcome.refusal:
            self._fail_attempt(outcome.refusal)
            return
        if outcome.result is not None:
            self._record_decision(r, outcome.result)
        self._complete(r, outcome.data, outcome.metrics)

    def _complete(self, r: OpenRound, data: bytes, metrics: dict[str, float]) -> None:
        """Store round ``r``'s new global version and summary, and close the round."""
        summary = {**metrics, "updates": float(len(r.contributions)),
                   "examples": float(sum(c.num_examples for c in r.contributions.values())),
                   **self._privacy_summary(r)}
        self.store.complete_round(r.row(self.job_id, RoundState.DONE, self.clock(), summary), self.encoding, data)
        self.log.info("round aggregated", round=r.number, updates=len(r.contributions), aggregator=self.aggregator.name)
        self.open = None
        self.next_attempt, self.failures = 1, 0
        if r.number >= self.config.job.rounds:
            self._set_state(JobState.DONE, "all rounds completed")

    # ---- encrypted jobs with a Gram defence: decide on the encrypted Gram matrix ------------------------
    def _begin_gram(self, r: OpenRound) -> None:
        """Compute the round's encrypted Gram matrix and hand it to two key holders to decrypt.

        Decryptors are drawn (seeded by job seed, round and attempt) from online key holders that did not
        contribute to the round, when two exist: a contributor that decrypts learns the inner products of
        the others' updates with its own.
        """
        assert r.gram is not None
        too_few = self.levels.plan.too_few(len(r.gram.updates)) if self.levels is not None else ""
        if too_few:
            self._gram_failed(r, too_few)
            return
        holders = [p for p in self.online() if self.keys is not None and self.keys.holds(p)]
        outsiders = [p for p in holders if p not in r.contributions]
        pool = outsiders if len(outsiders) >= DECRYPTORS else holders
        if len(pool) < DECRYPTORS:
            self._gram_failed(r, f"an encrypted Gram matrix needs {DECRYPTORS} online key holders to decrypt it, "
                                 f"{len(pool)} online")
            return
        rng = random.Random(f"{self.config.job.seed}:{r.number}:{r.attempt}:decryptors")
        r.gram.begin(sorted(rng.sample(pool, DECRYPTORS)))
        r.deadline = self.clock() + self.config.job.round_deadline_s
        self.offload(r.gram.compute, lambda outcome: self._gram_computed(r, outcome))

    def _gram_computed(self, r: OpenRound, outcome: bytes | Exception) -> None:
        """The offloaded Gram step is back: hand the matrix to the decryptors, with a fresh deadline for them.
        A round that closed meanwhile (deadline, cancel, expulsion) keeps its outcome; this result is dropped."""
        assert r.gram is not None
        if self.open is not r:
            self.log.info("encrypted Gram matrix dropped: its round attempt closed while it was computed",
                          round=r.number, attempt=r.attempt)
            return
        if isinstance(outcome, Exception):
            self._gram_failed(r, f"the encrypted Gram matrix could not be computed: {outcome}")
            return
        r.gram.payload = outcome
        r.deadline = self.clock() + self.config.job.round_deadline_s
        self.log.info("encrypted Gram matrix computed", round=r.number, updates=len(r.gram.order),
                      seconds=round(r.gram.gram_seconds, 3), bytes=len(outcome), decryptors=list(r.gram.decryptors))

    def _gram_failed(self, r: OpenRound, why: str) -> None:
        """No usable Gram matrix: a robust decision fails closed (the attempt fails, no version); cohort
        discovery is postponed to the next round and this round aggregates without it."""
        if self.levels is not None:
            self._aggregate_levels(r, postponed=why)
        else:
            self._fail_attempt(why)

    def _gram_round(self, participant_id: str, round_: int) -> GramRound:
        self._member(participant_id)
        r = self.open
        if r is None or r.number != round_ or r.gram is None or not r.gram.computed:
            current = "none" if r is None else str(r.number)
            raise StaleRound(f"no encrypted Gram matrix awaits decryption for round {round_} (open round: {current})")
        return r.gram

    def gram_payload(self, participant_id: str, round_: int) -> Payload:
        """The packed Gram ciphertext of round ``round_``, for its two decryptors only."""
        gram = self._gram_round(participant_id, round_)
        return Payload(self.job_id, round_, GRAM_ENCODING, len(gram.order), gram.request(participant_id))

    def report_gram(self, participant_id: str, round_: int, scalars: list[float]) -> None:
        """A decryptor's Gram scalars; with both in, decide (or refuse if they disagree) and fold."""
        gram = self._gram_round(participant_id, round_)
        if not gram.answer(participant_id, scalars):
            return
        r = self.open
        assert r is not None
        try:
            g = gram.agreed()
        except DecryptorDisagreement as exc:
            if self.levels is not None:
                self._gram_failed(r, str(exc))
                return
            self.log.warning("robust decision refused: Gram decryptors disagree", round=r.number,
                             decryptors=list(gram.decryptors), reason=str(exc))
            self._fail_attempt(f"robust decision refused: {exc}")
            return
        if self.levels is not None:  # the cohort-discovery round of a levelled job
            self._aggregate_levels(r, g)
            return
        assert isinstance(self.aggregator, GramDefence)
        try:
            verdict, metrics = self.aggregator.judge(gram.order, g)
        except RobustAssumptionError as exc:
            self._fail_attempt(f"{self.aggregator.name} refused: {exc}")
            return
        self._record_decision(r, AggregateResult(NO_PLAINTEXT, verdict.accepted, metrics, verdict))
        self._complete(r, gram.fold(verdict.accepted), {**metrics, "gram_seconds": gram.gram_seconds})

    def _privacy_summary(self, r: OpenRound) -> dict[str, float]:
        """Record-level epsilon of this round's contributors (max, median) and participant-level epsilon."""
        if not self.config.dp.enabled:
            return {}
        reports = [row for row in self.store.privacy_reports(self.job_id, r.number) if row.participant_id in
                   r.contributions]
        summary = record_summary(reports)
        if self.privacy.enabled:
            summary["participant_epsilon"] = self.privacy.record(r.number, r.sample_rate)
            summary["participant_delta"] = self.config.dp.participant_delta
        return summary

    @property
    def quarantine_limit(self) -> int:
        """Consecutive rejections that quarantine a member; 0 when the job's aggregator never quarantines."""
        return self.config.robust.quarantine_after if self.aggregator.quarantines else 0

    def _record_decision(self, r: OpenRound, result: AggregateResult) -> None:
        """Store a robust aggregator's verdict and update rejection streaks; quarantine at the configured limit."""
        decision = result.decision
        if decision is None:
            return
        self.store.save_decisions(self.job_id, [
            FlagView(r.number, r.attempt, pid, pid in decision.accepted, decision.scores[pid],
                     decision.score_name, decision.defence) for pid in (*decision.accepted, *decision.rejected)])
        limit = self.quarantine_limit
        for pid in decision.accepted:
            self.streaks[pid] = 0
        for pid in decision.rejected:
            self.streaks[pid] = self.streaks.get(pid, 0) + 1
            if limit and self.streaks[pid] >= limit and self.members[pid].state == ACTIVE:
                self._set_member_state(pid, QUARANTINED)
                self.log.warning("participant quarantined", participant=pid, round=r.number,
                                 consecutive_rejections=self.streaks[pid])
        if decision.rejected:
            self.log.info("updates rejected", round=r.number, defence=decision.defence, rejected=list(decision.rejected))

    def _set_member_state(self, participant_id: str, state: str) -> None:
        row = dataclasses.replace(self.members[participant_id], state=state)
        self.members[participant_id] = row
        self.store.upsert_member(row)

    def release(self, participant_id: str) -> str:
        """Admin: lift a quarantine; the participant is eligible for selection again with a fresh streak."""
        member = self.members.get(participant_id)
        if member is None:
            raise NotFound(f"{participant_id} is not a member of job {self.job_id}")
        if member.state != QUARANTINED:
            raise PreconditionFailed(f"{participant_id} is not quarantined (state {member.state})")
        self._set_member_state(participant_id, ACTIVE)
        self.streaks[participant_id] = 0
        self.log.info("participant released", participant=participant_id)
        return ACTIVE

    def _global_vector(self, version: int) -> np.ndarray:
        """Plaintext global ``version``, decoded once: every update of a round is checked against the same one
        (``Aggregator.check``), and a stored version never changes."""
        if self._decoded_global is None or self._decoded_global[0] != version:
            stored = self.store.prompt(self.job_id, version)
            assert stored is not None  # a round opens only once the global it trains from exists
            vector = decode_vector(Payload(self.job_id, version, stored[0], self.vector_size, stored[1]),
                                   self.vector_size)
            self._decoded_global = (version, vector)
        return self._decoded_global[1]

    def _fail_attempt(self, why: str) -> None:
        r = self.open
        assert r is not None
        self.failures += 1
        self.store.save_round(r.row(self.job_id, RoundState.FAILED, self.clock(),
                                    {"failed": 1.0, "failures": float(self.failures)}))
        self.log.warning("round failed", round=r.number, attempt=r.attempt, failures=self.failures, reason=why)
        self.open = None
        self.next_attempt = r.attempt + 1
        if self.failures >= self.max_attempts:
            self._set_state(JobState.PAUSED, f"round {r.number} failed {self.failures} times: {why}")

    # ---- views -------------------------------------------------------------------------------------
    def latest_version(self) -> int | None:
        return self.store.latest_version(self.job_id)

    def weighted_metrics(self, version: int) -> tuple[dict[str, float], int]:
        """Example-weighted mean of each metric reported on ``version``, and the number of reports.

        Each metric is averaged over the reports that carry it (e.g. pseudo-labelling metrics come only from
        the participants that trained in that round), never diluted by zeros from the others.
        """
        rows = self.store.metrics(self.job_id, version)
        means = {}
        for key in sorted({k for r in rows for k in r.metrics}):
            having = [r for r in rows if key in r.metrics]
            total = sum(r.num_examples for r in having)
            if total:
                means[key] = sum(r.metrics[key] * r.num_examples for r in having) / total
        return means, len(rows)

    def quarantined(self) -> tuple[str, ...]:
        return tuple(sorted(p for p, m in self.members.items() if m.state == QUARANTINED))

    def flags(self) -> FlagsView:
        """Every stored robust-aggregation verdict, the quarantined members and the current rejection streaks."""
        return FlagsView(tuple(self.store.decisions(self.job_id)), self.quarantined(), dict(sorted(self.streaks.items())))

    def view(self) -> JobView:
        rejected: dict[tuple[int, int], list[str]] = {}
        for d in self.store.decisions(self.job_id):
            if not d.accepted:
                rejected.setdefault((d.round, d.attempt), []).append(d.participant_id)
        rounds = []
        for row in self.store.rounds(self.job_id):
            metrics, reports = self.weighted_metrics(row.round) if row.state == RoundState.DONE.value else ({}, 0)
            reported = tuple(sorted(self.open.contributions)) if (
                self.open and self.open.number == row.round and self.open.attempt == row.attempt) else ()
            rounds.append(RoundView(row.round, row.state, row.attempt, row.selected, reported, row.opened_at,
                                    row.closed_at, row.bytes_up, row.bytes_down, {**row.summary, **metrics}, reports,
                                    tuple(rejected.get((row.round, row.attempt), ()))))
        initial, _ = self.weighted_metrics(0)
        latest = self.latest_version()
        return JobView(
            job_id=self.job_id, name=self.config.job.name, state=self.state.value,
            current_round=self.open.number if self.open else (latest or 0), total_rounds=self.config.job.rounds,
            global_version=latest if latest is not None else -1, participants=len(self.members),
            aggregator=self.aggregator.name, vector_size=self.vector_size, config_toml=self.config_toml,
            initial_metrics=initial, rounds=tuple(rounds), reason=self.reason or self.phase,
            quarantined=self.quarantined(),
        )
