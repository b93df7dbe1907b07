"""``coordinator.uploads.UploadGate`` as a plain object over a real roster, round machine and SQLite store: what
``admit`` lets through by its header alone, what ``recheck`` refuses once things moved on, the vector size a job
agrees on, and which retries ``already_received`` recognises."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fedprompt.config import HESection, RobustSection
from fedprompt.coordinator.accumulators import Accumulator, GramAccumulator, PlainAccumulator
from fedprompt.coordinator.aggregation import FedAvg, NormBound
from fedprompt.coordinator.keys import JobKeys
from fedprompt.coordinator.offload import inline
from fedprompt.coordinator.privacy import ParticipantLedger
from fedprompt.coordinator.roster import Roster
from fedprompt.coordinator.rounds import OpenRound, RoundMachine, RoundState
from fedprompt.coordinator.store import Store
from fedprompt.coordinator.uploads import MAX_VECTOR_SIZE, Admission, UploadGate, UploadKind
from fedprompt.crypto.ckks import SecretContext
from fedprompt.crypto.gram import EVALUATION_KEYS, MAX_EVALUATION_KEY_BYTES, evaluation_keys
from fedprompt.errors import (
    DuplicateUpdate,
    InvalidRequest,
    InvalidUpdate,
    NotEnrolled,
    NotFound,
    NotSelected,
    PreconditionFailed,
    StaleRound,
)
from fedprompt.protocol import Payload, PayloadHeader
from fedprompt.wire.payload import FLOAT32
from tests.fakes import SIZE, Clock, dealt_keys, encrypted_update, plain_update
from tests.support import tiny_job

JOB = "job-1"
DECLARED = 10  # training examples every member declares at join


@dataclass
class Gate:
    """An upload gate and what it consults: members a, b and c, a round machine, the store and the clock."""

    gate: UploadGate
    rounds: RoundMachine
    roster: Roster
    store: Store
    clock: Clock

    def open(self) -> OpenRound:
        return self.rounds.require()

    def count(self, participant_id: str, payload: Payload) -> None:
        """What the job does with an accepted update: fold it, count it, record its digest, settle."""
        r = self.open()
        r.fold.add(participant_id, payload)
        self.rounds.report(participant_id, payload.num_examples, len(payload.data))
        self.store.record_update(JOB, r.number, r.attempt, participant_id, payload.num_examples, len(payload.data),
                                 hashlib.sha256(payload.data).hexdigest())
        self.rounds.settle()


def build(tmp_path: Path, per_round: int, accumulator: Accumulator | None = None, keys: JobKeys | None = None,
          store: Store | None = None, **job: object) -> Gate:
    config = tiny_job(tmp_path, rounds=2, participants_per_round=per_round, min_participants=2, round_deadline_s=30.0,
                      **job)
    store = store or Store(tmp_path / "state.sqlite")
    store.add_job(JOB, "tiny", "", "running")
    clock = Clock()
    roster = Roster(JOB, ("*",), store, 60.0, 0)
    if accumulator is None:
        accumulator = PlainAccumulator(FedAvg(), JOB, store, lambda: gate.vector_size)
    rounds = RoundMachine(JOB, config, store, clock, roster, accumulator, keys,
                          ParticipantLedger(JOB, config.dp, store), inline)
    gate = UploadGate(JOB, roster, rounds, accumulator, keys, store)
    for name in ("a", "b", "c"):
        gate.agree_size(SIZE)
        roster.join(name, DECLARED, 5, clock())
    return Gate(gate, rounds, roster, store, clock)


@pytest.fixture
def joined(tmp_path: Path) -> Iterator[Gate]:
    """A plaintext job of a, b and c (a joined first), without an initial prompt yet."""
    made = build(tmp_path, per_round=3)
    yield made
    made.store.close()


def initial(g: Gate) -> Payload:
    return plain_update(JOB, 0, np.zeros(SIZE, np.float32), 0)


def start_round(g: Gate) -> OpenRound:
    """Store version 0 and open round 1."""
    g.store.save_prompt(JOB, 0, FLOAT32, initial(g).data)
    g.rounds.tick(running=True)
    return g.open()


def header(payload: Payload, **changes: object) -> PayloadHeader:
    return dataclasses.replace(payload.header(1024), **changes)  # type: ignore[arg-type]


def update(value: float = 1.0, round_: int = 1, n: int = DECLARED) -> Payload:
    return plain_update(JOB, round_, np.full(SIZE, value, np.float32), n)


# ---- the vector size ----------------------------------------------------------------------------------------
def test_the_first_member_fixes_the_vector_size_and_later_ones_must_match(tmp_path: Path) -> None:
    made = build(tmp_path, per_round=3)
    store = Store(tmp_path / "other.sqlite")
    store.add_job(JOB, "tiny", "", "created")
    gate = UploadGate(JOB, made.roster, made.rounds, made.gate.accumulator, None, store)
    for bad in (0, MAX_VECTOR_SIZE + 1):
        with pytest.raises(InvalidRequest, match=f"vector_size must be in \\[1, {MAX_VECTOR_SIZE}\\]"):
            gate.agree_size(bad)
    assert gate.vector_size == 0 and store.jobs()[0].vector_size == 0
    gate.agree_size(SIZE)
    assert gate.vector_size == SIZE and store.jobs()[0].vector_size == SIZE  # written through
    gate.agree_size(SIZE)
    with pytest.raises(InvalidUpdate, match=f"your model yields {SIZE + 1} prompt parameters, this job uses {SIZE}"):
        gate.agree_size(SIZE + 1)
    assert gate.vector_size == SIZE and store.jobs()[0].vector_size == SIZE
    store.close()
    made.store.close()


# ---- every header ---------------------------------------------------------------------------------------------
def test_the_caller_must_be_a_member_and_is_marked_seen(joined: Gate) -> None:
    with pytest.raises(NotEnrolled):
        joined.gate.admit("mallory", header(initial(joined), job_id="another-job"))
    joined.clock.now += 42
    joined.gate.admit("a", initial(joined).header(1024))
    assert joined.roster.members["a"].last_seen == joined.clock()


@pytest.mark.parametrize(("changes", "error", "match"), [
    ({"job_id": "another-job"}, NotFound, "header names job 'another-job', the stream is for job-1"),
    ({"encoding": "float64"}, InvalidUpdate, f"encoding 'float64' is not accepted by this job \\(expects '{FLOAT32}'\\)"),
    ({"vector_size": SIZE + 1}, InvalidUpdate, f"update has {SIZE + 1} parameters, expected {SIZE}"),
    ({"encoding": EVALUATION_KEYS}, PreconditionFailed, "is not encrypted"),
])
def test_a_header_for_another_job_encoding_or_size_is_refused(joined: Gate, changes: dict[str, object],
                                                               error: type[Exception], match: str) -> None:
    start_round(joined)
    for payload in (initial(joined), update()):
        with pytest.raises(error, match=match):
            joined.gate.admit("a", header(payload, **changes))


# ---- the initial prompt ---------------------------------------------------------------------------------------
def test_the_initial_prompt_comes_only_from_the_initialiser_and_only_once(joined: Gate) -> None:
    admitted = joined.gate.admit("a", initial(joined).header(1024))
    assert admitted == Admission("a", initial(joined).header(1024), UploadKind.INITIAL, 4 * SIZE, 0)
    with pytest.raises(NotSelected, match="the initial prompt comes from a, not b"):
        joined.gate.admit("b", initial(joined).header(1024))
    joined.store.save_prompt(JOB, 0, FLOAT32, initial(joined).data)  # a's upload (or another stream of it) landed
    with pytest.raises(StaleRound, match="the initial prompt was already provided"):
        joined.gate.recheck(admitted)
    with pytest.raises(StaleRound, match="already provided"):
        joined.gate.admit("a", initial(joined).header(1024))


# ---- updates --------------------------------------------------------------------------------------------------
def test_an_update_is_admitted_for_the_open_attempt_with_its_byte_limit(joined: Gate) -> None:
    r = start_round(joined)
    admitted = joined.gate.admit("b", update().header(1024))
    assert (admitted.kind, admitted.attempt, admitted.max_bytes) == (UploadKind.UPDATE, r.attempt, 4 * SIZE)
    joined.gate.recheck(admitted)  # nothing moved on: still fine


def test_an_update_without_an_open_round_or_for_another_round_is_stale(joined: Gate) -> None:
    joined.store.save_prompt(JOB, 0, FLOAT32, initial(joined).data)
    with pytest.raises(StaleRound, match="update for round 1, the open round is none"):
        joined.gate.admit("a", update().header(1024))
    joined.rounds.tick(running=True)
    with pytest.raises(StaleRound, match="update for round 2, the open round is 1"):
        joined.gate.admit("a", update(round_=2).header(1024))


def test_an_update_from_a_member_not_selected_is_refused(tmp_path: Path) -> None:
    made = build(tmp_path, per_round=2)
    r = start_round(made)
    (outsider,) = {"a", "b", "c"} - set(r.selected)
    with pytest.raises(NotSelected, match=f"{outsider} is not selected for round 1"):
        made.gate.admit(outsider, update().header(1024))
    made.store.close()


def test_a_second_update_in_the_same_attempt_is_a_duplicate(joined: Gate) -> None:
    start_round(joined)
    joined.count("a", update())
    with pytest.raises(DuplicateUpdate, match="a already submitted for round 1"):
        joined.gate.admit("a", update(2.0).header(1024))


def test_an_update_after_the_deadline_is_stale(joined: Gate) -> None:
    r = start_round(joined)
    admitted = joined.gate.admit("a", update().header(1024))
    joined.clock.now = r.deadline + 1
    with pytest.raises(StaleRound, match="round 1 deadline has passed"):
        joined.gate.recheck(admitted)
    with pytest.raises(StaleRound, match="deadline has passed"):
        joined.gate.admit("b", update().header(1024))


def test_an_attempt_deciding_on_its_gram_matrix_takes_no_more_updates(joined: Gate) -> None:
    r = start_round(joined)
    admitted = joined.gate.admit("c", update().header(1024))
    r.state = RoundState.DECIDING
    with pytest.raises(StaleRound, match=r"round 1 is deciding \(training is over\)"):
        joined.gate.recheck(admitted)


def test_an_update_admitted_for_a_failed_attempt_is_stale_in_the_next(joined: Gate) -> None:
    r = start_round(joined)
    admitted = joined.gate.admit("a", update().header(1024))
    joined.clock.now = r.deadline  # nobody reported: attempt 1 fails, attempt 2 opens
    for name in ("a", "b", "c"):
        joined.roster.touch(name, joined.clock())
    joined.rounds.tick(running=True)
    assert (joined.open().number, joined.open().attempt) == (1, 2)
    with pytest.raises(StaleRound, match="update for round 1, the open round is 1"):
        joined.gate.recheck(admitted)
    assert joined.gate.admit("a", update().header(1024)).attempt == 2


@pytest.mark.parametrize(("n", "match"), [(0, "num_examples must be >= 1"),
                                          (DECLARED + 1, f"num_examples {DECLARED + 1} exceeds the {DECLARED} "
                                                         "training examples declared at join")])
def test_an_update_must_declare_between_one_and_the_joined_examples(joined: Gate, n: int, match: str) -> None:
    start_round(joined)
    with pytest.raises(InvalidUpdate, match=match):
        joined.gate.admit("a", update(n=n).header(1024))
    assert joined.gate.admit("a", update(n=DECLARED).header(1024)).kind is UploadKind.UPDATE


# ---- encrypted jobs ---------------------------------------------------------------------------------------------
def test_evaluation_keys_come_from_the_dealer_once_and_updates_are_bounded_by_the_ciphertext_size(
        tmp_path: Path) -> None:
    config = dataclasses.replace(tiny_job(tmp_path, aggregator="norm_bound"), he=HESection(enabled=True, mode="single_key"))
    secret = SecretContext.create(config.he_params(gram_defence=True))
    store = Store(tmp_path / "state.sqlite")
    keys = dealt_keys(store, JOB, secret, ("a", "b", "c"))
    accumulator = GramAccumulator(keys, lambda: SIZE, NormBound(RobustSection(max_malicious=1)))
    made = build(tmp_path, per_round=3, accumulator=accumulator, keys=keys, store=store, aggregator="norm_bound")
    keys_payload = Payload(JOB, 0, EVALUATION_KEYS, 0, evaluation_keys(secret))
    with pytest.raises(NotEnrolled, match="b is not the key dealer of job job-1 \\(a\\)"):
        made.gate.admit("b", keys_payload.header(1024))
    admitted = made.gate.admit("a", keys_payload.header(1024))
    assert (admitted.kind, admitted.max_bytes) == (UploadKind.EVALUATION_KEYS, MAX_EVALUATION_KEY_BYTES)
    keys.publish_evaluation_keys("a", keys_payload.data)  # another stream of the dealer's landed first
    with pytest.raises(DuplicateUpdate, match="already has its evaluation keys"):
        made.gate.recheck(admitted)
    made.store.save_prompt(JOB, 0, "ckks", b"stored")
    made.rounds.tick(running=True)
    payload = encrypted_update(secret, JOB, 1, np.full(SIZE, 0.1), DECLARED, weight_slot=False)
    assert made.gate.admit("a", payload.header(1024)).max_bytes == secret.expected_size(SIZE) >= len(payload.data)
    store.close()


# ---- retries ------------------------------------------------------------------------------------------------
def test_a_retry_of_the_initial_prompt_is_recognised_by_its_digest_from_the_initialiser_only(joined: Gate) -> None:
    sent = initial(joined)
    assert not joined.gate.already_received("a", sent.header(1024))  # nothing stored yet
    joined.store.save_prompt(JOB, 0, FLOAT32, sent.data)
    assert joined.gate.already_received("a", sent.header(1024))
    assert not joined.gate.already_received("b", sent.header(1024))
    assert not joined.gate.already_received("a", header(sent, sha256=hashlib.sha256(b"other").digest()))
    assert not joined.gate.already_received("a", header(sent, job_id="another-job"))


def test_a_retry_of_a_counted_update_is_recognised_by_its_digest(joined: Gate) -> None:
    start_round(joined)
    sent = update(1.0)
    assert not joined.gate.already_received("a", sent.header(1024))
    joined.count("a", sent)
    assert joined.gate.already_received("a", sent.header(1024))
    assert not joined.gate.already_received("a", update(2.0).header(1024))  # another update: a duplicate, not a retry
    assert not joined.gate.already_received("b", sent.header(1024))
    assert not joined.gate.already_received("a", header(sent, job_id="another-job"))


def test_only_the_counting_attempt_recognises_a_retry(joined: Gate) -> None:
    r = start_round(joined)
    lost = update(1.0)
    joined.count("a", lost)
    joined.clock.now = r.deadline  # one of two needed: attempt 1 fails with a's update in it
    for name in ("a", "b", "c"):
        joined.roster.touch(name, joined.clock())
    joined.rounds.tick(running=True)
    assert joined.open().attempt == 2
    assert not joined.gate.already_received("a", lost.header(1024))  # lost with attempt 1: take it again
    kept = update(3.0)
    joined.count("a", kept)
    joined.count("b", update(5.0))
    joined.count("c", update(7.0))
    assert joined.store.latest_version(JOB) == 1 and joined.rounds.open is None
    assert joined.gate.already_received("a", kept.header(1024))  # attempt 2 completed: its answer stays good
    assert not joined.gate.already_received("a", lost.header(1024))
    joined.rounds.tick(running=True)
    assert joined.open().number == 2 and joined.gate.already_received("b", update(5.0).header(1024))
