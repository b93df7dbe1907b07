"""The round state machine of one job: waiting -> training -> aggregating -> done, round after round.

A round opens once the job runs, the previous global version exists and at least ``min_participants``
members are online; it selects up to ``participants_per_round`` of them (seeded by job seed, round and
attempt), collects their updates, and aggregates when all selected reported, or at the deadline if at least
``min_participants`` did.  Below the minimum at the deadline the round is retried with a fresh selection,
at most ``max_attempts`` times, after which the job pauses with the reason in its status.

Global version ``v`` is the prompt after ``v`` aggregated rounds; version 0 (the initial prompt) is
supplied by the first participant to join, so the coordinator never needs the PLM.  Every member
evaluates each new global version on its local test split and reports metrics.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import structlog

from coordinator.aggregation import Contribution, make_aggregator
from coordinator.store import MemberRow, RoundRow, Store
from fedprompt.config import JobConfig
from fedprompt.errors import (
    DuplicateUpdate,
    InvalidUpdate,
    JobStateError,
    NotEnrolled,
    NotFound,
    NotSelected,
    StaleRound,
)
from fedprompt.payload import FLOAT32, decode_vector
from fedprompt.protocol import JobDescription, JobView, JoinInfo, Payload, PayloadHeader, RoundView, Task, TaskKind

log = structlog.get_logger("coordinator.rounds")

MAX_METRICS = 32


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
    contributions: dict[str, Contribution] = field(default_factory=dict)
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
    ) -> None:
        self.job_id = job_id
        self.config = config
        self.config_toml = config_toml
        self.store = store
        self.clock = clock
        self.offline_after_s = offline_after_s
        self.max_attempts = max_attempts
        self.aggregator = make_aggregator(config.job.aggregator)
        self.state = JobState.CREATED
        self.reason = ""
        self.vector_size = 0
        self.members: dict[str, MemberRow] = {}
        self.initialiser: str | None = None
        self.open: OpenRound | None = None
        self.next_attempt = 1
        self.evaluated: dict[str, set[int]] = {}
        self.version_downloads: dict[int, int] = {}
        self.log = log.bind(job_id=job_id)

    # ---- admin transitions -------------------------------------------------------------------------
    def start(self) -> JobState:
        if self.state not in (JobState.CREATED, JobState.PAUSED):
            raise JobStateError(f"job {self.job_id} is {self.state.value}; only created or paused jobs can start")
        self._set_state(JobState.RUNNING)
        self.next_attempt = 1 if self.open is None else self.next_attempt
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
    def describe(self) -> JobDescription:
        return JobDescription(self.job_id, self.config.job.name, self.config_toml)

    def join(self, participant_id: str, num_train: int, num_test: int, vector_size: int) -> JoinInfo:
        if self.state in TERMINAL:
            raise JobStateError(f"job {self.job_id} is {self.state.value}; it takes no new participants")
        if num_train < 1:
            raise InvalidUpdate("num_train_examples must be >= 1")
        if vector_size < 1:
            raise InvalidUpdate("vector_size must be >= 1")
        if self.vector_size == 0:
            self.vector_size = vector_size
            self.store.set_vector_size(self.job_id, vector_size)
        elif vector_size != self.vector_size:
            raise InvalidUpdate(f"your model yields {vector_size} prompt parameters, this job uses {self.vector_size}; "
                                "check the model and prompt length")
        now = self.clock()
        previous = self.members.get(participant_id)
        row = MemberRow(self.job_id, participant_id, num_train, num_test, previous.joined_at if previous else now,
                        now, "active")
        self.members[participant_id] = row
        self.store.upsert_member(row)
        self.evaluated.setdefault(participant_id, set())
        if self.initialiser is None:
            self.initialiser = participant_id
        provide = self.latest_version() is None and self.initialiser == participant_id
        self.log.info("participant joined", participant=participant_id, num_train=num_train, provides_initial=provide)
        return JoinInfo(self.job_id, participant_id, provide)

    def _member(self, participant_id: str) -> MemberRow:
        member = self.members.get(participant_id)
        if member is None:
            raise NotEnrolled(f"{participant_id} has not joined job {self.job_id}")
        self.members[participant_id] = dataclasses.replace(member, last_seen=self.clock())
        return member

    def next_task(self, participant_id: str) -> Task:
        """The caller's next task: evaluate the newest global version first, then train if selected."""
        self._member(participant_id)
        if self.state in (JobState.CANCELLED, JobState.FAILED):
            return Task(TaskKind.DONE, reason=f"job {self.state.value}: {self.reason}")
        latest = self.latest_version()
        if latest is None:
            return Task(TaskKind.WAIT, reason="waiting for the initial prompt")
        if latest not in self.evaluated[participant_id]:
            return Task(TaskKind.EVALUATE, global_version=latest)
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
        return f"round {self.open.number} training ({len(self.open.contributions)}/{len(self.open.selected)} reported)"

    def check_header(self, participant_id: str, header: PayloadHeader) -> int:
        """Validate an upload's header before any chunk is read; returns the byte limit for its payload."""
        self._member(participant_id)
        if header.job_id != self.job_id:
            raise NotFound(f"header names job {header.job_id!r}, the stream is for {self.job_id}")
        if header.encoding != FLOAT32:
            raise InvalidUpdate(f"encoding {header.encoding!r} is not accepted by this job (expects {FLOAT32!r})")
        if header.vector_size != self.vector_size:
            raise InvalidUpdate(f"update has {header.vector_size} parameters, expected {self.vector_size}")
        if header.round == 0:
            if self.latest_version() is not None:
                raise StaleRound("the initial prompt was already provided")
            if participant_id != self.initialiser:
                raise NotSelected(f"the initial prompt comes from {self.initialiser}, not {participant_id}")
            return 4 * self.vector_size
        r = self.open
        if r is None or header.round != r.number:
            current = "none" if r is None else str(r.number)
            raise StaleRound(f"update for round {header.round}, the open round is {current}")
        if participant_id not in r.selected:
            raise NotSelected(f"{participant_id} is not selected for round {r.number}")
        if participant_id in r.contributions:
            raise DuplicateUpdate(f"{participant_id} already submitted for round {r.number}")
        if self.clock() > r.deadline:
            raise StaleRound(f"round {r.number} deadline has passed")
        if header.num_examples < 1:
            raise InvalidUpdate("num_examples must be >= 1")
        if header.num_examples > self.members[participant_id].num_train:
            raise InvalidUpdate(f"num_examples {header.num_examples} exceeds the {self.members[participant_id].num_train} "
                                "training examples declared at join")
        return 4 * self.vector_size

    def submit(self, participant_id: str, payload: Payload) -> None:
        """Accept a complete, digest-checked payload; aggregates at once when the last selected one arrives."""
        header = payload.header(max(1, len(payload.data)))
        self.check_header(participant_id, header)
        vector = decode_vector(payload, self.vector_size)
        if payload.round == 0:
            self.store.save_prompt(self.job_id, 0, FLOAT32, payload.data)
            self.log.info("initial prompt stored", participant=participant_id)
            self.tick()
            return
        r = self.open
        assert r is not None  # check_header guarantees an open round for round > 0
        self.aggregator.check(self._global_vector(r.number - 1), vector)
        r.contributions[participant_id] = Contribution(participant_id, payload.num_examples, vector)
        r.bytes_up += len(payload.data)
        self.store.record_update(self.job_id, r.number, r.attempt, participant_id, payload.num_examples,
                                 len(payload.data), header.sha256.hex())
        self.log.info("update accepted", participant=participant_id, round=r.number,
                      reported=len(r.contributions), selected=len(r.selected))
        if len(r.contributions) == len(r.selected):
            self._aggregate()

    def global_payload(self, participant_id: str | None, version: int) -> Payload:
        """A stored global version (``participant_id`` None for admin export); counts bytes down."""
        if participant_id is not None:
            self._member(participant_id)
        stored = self.store.prompt(self.job_id, version)
        if stored is None:
            raise NotFound(f"job {self.job_id} has no global version {version}")
        encoding, data = stored
        if participant_id is not None:
            self.version_downloads[version] = self.version_downloads.get(version, 0) + len(data)
        return Payload(self.job_id, version, encoding, self.vector_size, data)

    def report_metrics(self, participant_id: str, version: int, metrics: dict[str, float], num_examples: int) -> None:
        self._member(participant_id)
        latest = self.latest_version()
        if latest is None or not 0 <= version <= latest:
            raise NotFound(f"job {self.job_id} has no global version {version}")
        if len(metrics) > MAX_METRICS or not all(math.isfinite(v) for v in metrics.values()):
            raise InvalidUpdate(f"metrics must be at most {MAX_METRICS} finite values")
        self.store.save_metrics(self.job_id, version, participant_id, num_examples, metrics)
        self.evaluated[participant_id].add(version)

    # ---- time-driven transitions -------------------------------------------------------------------
    def tick(self) -> None:
        """Open a round when one is due; close the open round at its deadline."""
        now = self.clock()
        r = self.open
        if r is not None and now >= r.deadline:
            if len(r.contributions) >= self.config.job.min_participants:
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
        return sorted(p for p, m in self.members.items() if m.state == "active" and m.last_seen >= cutoff)

    def _open_round(self, number: int) -> None:
        eligible = self.online()
        if len(eligible) < self.config.job.min_participants:
            return
        k = min(self.config.job.participants_per_round, len(eligible))
        rng = random.Random(f"{self.config.job.seed}:{number}:{self.next_attempt}")
        selected = tuple(sorted(rng.sample(eligible, k)))
        now = self.clock()
        self.open = OpenRound(number, self.next_attempt, selected, now, now + self.config.job.round_deadline_s)
        self.store.save_round(self.open.row(self.job_id, RoundState.TRAINING))
        self.log.info("round opened", round=number, attempt=self.next_attempt, selected=list(selected))

    def _aggregate(self) -> None:
        r = self.open
        assert r is not None
        r.bytes_down = self.version_downloads.get(r.number - 1, 0)  # the global this round trained from
        self.store.save_round(r.row(self.job_id, RoundState.AGGREGATING))
        current = self._global_vector(r.number - 1)
        result = self.aggregator.aggregate(current, list(r.contributions.values()))
        if not np.isfinite(result.vector).all():
            self._fail_attempt("aggregate is not finite")
            return
        self.store.save_prompt(self.job_id, r.number, FLOAT32, result.vector.astype("<f4").tobytes())
        summary = {**result.metrics, "updates": float(len(r.contributions)),
                   "examples": float(sum(c.num_examples for c in r.contributions.values()))}
        self.store.save_round(r.row(self.job_id, RoundState.DONE, self.clock(), summary))
        self.log.info("round aggregated", round=r.number, updates=len(r.contributions), aggregator=self.aggregator.name)
        self.open = None
        self.next_attempt = 1
        if r.number >= self.config.job.rounds:
            self._set_state(JobState.DONE, "all rounds completed")

    def _global_vector(self, version: int) -> np.ndarray:
        stored = self.store.prompt(self.job_id, version)
        assert stored is not None  # a round opens only once the global it trains from exists
        return decode_vector(Payload(self.job_id, version, stored[0], self.vector_size, stored[1]), self.vector_size)

    def _fail_attempt(self, why: str) -> None:
        r = self.open
        assert r is not None
        self.store.save_round(r.row(self.job_id, RoundState.FAILED, self.clock(), {"failed": 1.0}))
        self.log.warning("round failed", round=r.number, attempt=r.attempt, reason=why)
        self.open = None
        self.next_attempt = r.attempt + 1
        if self.next_attempt > self.max_attempts:
            self._set_state(JobState.PAUSED, f"round {r.number} failed {self.max_attempts} times: {why}")

    # ---- views -------------------------------------------------------------------------------------
    def latest_version(self) -> int | None:
        return self.store.latest_version(self.job_id)

    def weighted_metrics(self, version: int) -> tuple[dict[str, float], int]:
        """Example-weighted mean of each metric reported on ``version``, and the number of reports."""
        rows = self.store.metrics(self.job_id, version)
        total = sum(r.num_examples for r in rows)
        if total == 0:
            return {}, len(rows)
        keys = sorted({k for r in rows for k in r.metrics})
        means = {k: sum(r.metrics.get(k, 0.0) * r.num_examples for r in rows) / total for k in keys}
        return means, len(rows)

    def view(self) -> JobView:
        rounds = []
        for row in self.store.rounds(self.job_id):
            metrics, reports = self.weighted_metrics(row.round) if row.state == RoundState.DONE.value else ({}, 0)
            reported = tuple(sorted(self.open.contributions)) if (
                self.open and self.open.number == row.round and self.open.attempt == row.attempt) else ()
            rounds.append(RoundView(row.round, row.state, row.attempt, row.selected, reported, row.opened_at,
                                    row.closed_at, row.bytes_up, row.bytes_down, {**row.summary, **metrics}, reports))
        initial, _ = self.weighted_metrics(0)
        latest = self.latest_version()
        return JobView(
            job_id=self.job_id, name=self.config.job.name, state=self.state.value,
            current_round=self.open.number if self.open else (latest or 0), total_rounds=self.config.job.rounds,
            global_version=latest if latest is not None else -1, participants=len(self.members),
            aggregator=self.aggregator.name, vector_size=self.vector_size, config_toml=self.config_toml,
            initial_metrics=initial, rounds=tuple(rounds), reason=self.reason or self.phase,
        )
