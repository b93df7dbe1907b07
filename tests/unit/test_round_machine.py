"""``coordinator.rounds.RoundMachine`` as a plain object, without a ``JobRuntime``: a real SQLite store, a roster,
a plaintext accumulator (or an encrypted-Gram one on real CKKS keys) and a clock the test moves.  Selection,
settling an attempt (close, fail, retry, pause, end), and the deciding step of an encrypted Gram round."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fedprompt.config import HESection, JobConfig, RobustSection
from fedprompt.coordinator.accumulators import Accumulator, GramAccumulator, PlainAccumulator
from fedprompt.coordinator.aggregation import FedAvg, NormBound
from fedprompt.coordinator.keys import JobKeys
from fedprompt.coordinator.offload import Offload, inline
from fedprompt.coordinator.privacy import ParticipantLedger
from fedprompt.coordinator.roster import Roster
from fedprompt.coordinator.rounds import JobEnd, OpenRound, RoundMachine, RoundState
from fedprompt.coordinator.store import JobState, MemberState, Store
from fedprompt.crypto.audit import check
from fedprompt.crypto.ckks import ENCODING as CKKS
from fedprompt.crypto.ckks import SecretContext
from fedprompt.crypto.gram import decrypt_gram
from fedprompt.errors import StaleRound
from fedprompt.protocol import Payload
from fedprompt.wire.bundle import unpack_bundle
from fedprompt.wire.payload import FLOAT32, decode_vector, encode_vector
from tests.fakes import OUTLIER_DELTAS as DELTAS
from tests.fakes import (
    SIZE,
    Clock,
    Deferred,
    dealt_keys,
    encrypted_initial,
    encrypted_update,
    plain_update,
)
from tests.support import tiny_job

JOB = "job-1"
OFFLINE_AFTER_S = 60.0
DEADLINE_S = 30.0


@dataclass
class Machine:
    """A round machine with everything it reads: its members, its store and its clock."""

    rounds: RoundMachine
    roster: Roster
    store: Store
    clock: Clock
    config: JobConfig
    secret: SecretContext | None = None  # encrypted machines: the key every member holds

    def open(self) -> OpenRound:
        """The open attempt (read through a call, so mypy does not keep an earlier narrowing)."""
        return self.rounds.require()

    def row(self, attempt: int, round_: int = 1) -> tuple[str, dict[str, float]]:
        """The stored state and summary of one attempt."""
        (found,) = [r for r in self.store.rounds(JOB) if (r.round, r.attempt) == (round_, attempt)]
        return found.state, found.summary

    def is_open(self) -> bool:
        return self.rounds.open is not None

    def fail_attempt(self) -> JobEnd | None:
        """Let the open attempt's deadline pass (the members keep calling, so they stay online), and settle."""
        self.clock.now = self.open().deadline
        for member in self.roster.members:
            self.roster.touch(member, self.clock())
        return self.rounds.settle()


def build(tmp_path: Path, config: JobConfig, accumulator: Accumulator, store: Store, clock: Clock,
          members: tuple[str, ...], keys: JobKeys | None = None, offload: Offload = inline,
          max_attempts: int = 3) -> Machine:
    roster = Roster(JOB, ("*",), store, OFFLINE_AFTER_S, 2)
    for member in members:
        roster.join(member, 100, 5, clock())
    rounds = RoundMachine(JOB, config, store, clock, roster, accumulator, keys, ParticipantLedger(JOB, config.dp, store),
                          offload, max_attempts)
    return Machine(rounds, roster, store, clock, config)


def plain_machine(tmp_path: Path, members: tuple[str, ...] = ("a", "b", "c"), max_attempts: int = 3,
                  **job: object) -> Machine:
    """Plaintext FedAvg rounds (2 rounds, 3 per round, 2 needed, 30 s deadline unless ``job`` says otherwise)."""
    settings: dict[str, object] = {"rounds": 2, "participants_per_round": 3, "min_participants": 2,
                                   "round_deadline_s": DEADLINE_S, **job}
    config = tiny_job(tmp_path, **settings)
    store = Store(tmp_path / "state.sqlite")
    store.save_prompt(JOB, 0, FLOAT32, encode_vector(np.zeros(SIZE, np.float32)))
    accumulator = PlainAccumulator(FedAvg(), JOB, store, lambda: SIZE)
    return build(tmp_path, config, accumulator, store, Clock(), members, max_attempts=max_attempts)


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[Machine]:
    made = plain_machine(tmp_path)
    yield made
    made.store.close()


def deliver(m: Machine, participant_id: str, vector: np.ndarray, n: int = 10) -> JobEnd | None:
    """What the job does with an admitted update: fold it, count it, settle."""
    r = m.open()
    payload = plain_update(JOB, r.number, vector.astype(np.float32), n)
    r.fold.add(participant_id, payload)
    m.rounds.report(participant_id, n, len(payload.data))
    return m.rounds.settle()


def version(m: Machine, number: int) -> np.ndarray:
    stored = m.store.prompt(JOB, number)
    assert stored is not None
    return decode_vector(Payload(JOB, number, stored[0], SIZE, stored[1]), SIZE)


# ---- selection ---------------------------------------------------------------------------------------------
def selections(m: Machine, attempts: int) -> list[tuple[str, ...]]:
    """The selection of each of the first ``attempts`` attempts of round 1 (each failed in turn but the last)."""
    found = []
    for attempt in range(1, attempts + 1):
        assert m.rounds.tick(running=True) is None
        found.append(m.open().selected)
        assert m.open().attempt == attempt
        if attempt < attempts:
            assert m.fail_attempt() is None
    return found


def test_selection_is_reproducible_per_seed_round_and_attempt(tmp_path: Path) -> None:
    members = tuple("abcdef")
    first = selections(plain_machine(tmp_path / "1", members, seed=7), 3)
    assert selections(plain_machine(tmp_path / "2", members, seed=7), 3) == first  # another coordinator, alike
    assert all(len(s) == 3 and set(s) <= set(members) and list(s) == sorted(s) for s in first)
    assert len(set(first)) > 1  # the attempt is part of the seed: a retry draws anew
    other_seed = selections(plain_machine(tmp_path / "3", members, seed=8), 3)
    assert other_seed != first
    replay = plain_machine(tmp_path / "4", members, seed=7)
    replay.rounds.restore(next_attempt=3, failures=0)  # a restart resumes at attempt 3, without replaying 1 and 2
    replay.rounds.tick(running=True)
    assert (replay.open().attempt, replay.open().selected) == (3, first[2])


def test_selection_draws_among_the_online_members_only(machine: Machine) -> None:
    machine.clock.now += OFFLINE_AFTER_S + 1
    machine.roster.touch("a", machine.clock())
    machine.roster.touch("c", machine.clock())
    machine.rounds.tick(running=True)
    assert machine.open().selected == ("a", "c") and machine.open().sample_rate == 1.0


# ---- opening -----------------------------------------------------------------------------------------------
def test_no_round_opens_while_the_job_does_not_run_or_too_few_are_online(machine: Machine) -> None:
    assert machine.rounds.tick(running=False) is None and machine.rounds.open is None
    machine.clock.now += OFFLINE_AFTER_S + 1
    machine.roster.touch("a", machine.clock())  # one online, two needed
    assert machine.rounds.tick(running=True) is None and machine.rounds.open is None
    machine.roster.touch("b", machine.clock())
    assert machine.rounds.tick(running=True) is None and machine.open().selected == ("a", "b")
    assert machine.row(1) == ("training", {})


def test_the_job_ends_when_too_few_members_have_budget_left(machine: Machine) -> None:
    machine.roster.set_state("b", MemberState.EXHAUSTED)
    machine.roster.set_state("c", MemberState.EXHAUSTED)
    assert machine.rounds.tick(running=True) == JobEnd(JobState.DONE, "only 1 participants have privacy budget "
                                                                      "left, minimum 2")
    assert machine.rounds.open is None


# ---- settling ----------------------------------------------------------------------------------------------
def test_an_attempt_closes_as_soon_as_every_selected_member_reported(machine: Machine) -> None:
    machine.rounds.tick(running=True)
    assert deliver(machine, "a", np.full(SIZE, 1.0), 10) is None
    assert deliver(machine, "b", np.full(SIZE, 4.0), 30) is None
    assert machine.open().state is RoundState.TRAINING  # two of three are enough, but the deadline is not reached
    machine.clock.now += 5
    machine.rounds.served(0, 123)
    assert deliver(machine, "c", np.full(SIZE, 2.0), 10) is None
    assert machine.rounds.open is None and machine.store.latest_version(JOB) == 1
    np.testing.assert_allclose(version(machine, 1), np.full(SIZE, (10 + 120 + 20) / 50), rtol=1e-6)
    state, summary = machine.row(1)
    assert state == "done" and (summary["updates"], summary["examples"]) == (3.0, 50.0)
    (row,) = machine.store.rounds(JOB)
    assert row.closed_at == machine.clock() and row.bytes_down == 123 and row.bytes_up == 3 * 4 * SIZE
    assert (machine.rounds.next_attempt, machine.rounds.failures) == (1, 0)


def test_at_the_deadline_an_attempt_with_the_minimum_closes(machine: Machine) -> None:
    machine.rounds.tick(running=True)
    deliver(machine, "a", np.full(SIZE, 1.0))
    deliver(machine, "c", np.full(SIZE, 3.0))
    machine.clock.now = machine.open().deadline - 0.001
    assert machine.rounds.settle() is None and machine.is_open()
    machine.clock.now += 0.001
    assert machine.rounds.settle() is None and not machine.is_open()
    np.testing.assert_allclose(version(machine, 1), np.full(SIZE, 2.0))
    assert machine.row(1)[1]["updates"] == 2.0


def test_at_the_deadline_an_attempt_below_the_minimum_fails_and_the_round_is_retried(machine: Machine) -> None:
    machine.rounds.tick(running=True)
    deliver(machine, "a", np.full(SIZE, 1.0))
    assert machine.fail_attempt() is None
    assert machine.rounds.open is None and machine.store.latest_version(JOB) == 0
    assert machine.row(1) == ("failed", {"failed": 1.0, "failures": 1.0})
    assert (machine.rounds.next_attempt, machine.rounds.failures) == (2, 1)
    machine.rounds.tick(running=True)
    assert (machine.open().number, machine.open().attempt, machine.open().reported) == (1, 2, {})


def test_an_attempt_fails_at_once_when_fewer_selected_than_the_minimum_remain(machine: Machine) -> None:
    machine.rounds.tick(running=True)
    assert machine.rounds.withdraw("b") and not machine.rounds.withdraw("b") and not machine.rounds.withdraw("zed")
    assert machine.open().selected == ("a", "c") and machine.rounds.settle() is None
    assert machine.row(1)[0] == "training"  # the shrunk selection is stored
    assert machine.store.rounds(JOB)[0].selected == ("a", "c")
    machine.rounds.withdraw("c")
    assert machine.rounds.settle() is None  # one selected, two needed: no use waiting for the deadline
    assert machine.rounds.open is None and machine.row(1) == ("failed", {"failed": 1.0, "failures": 1.0})


def test_a_withdrawn_reporter_s_update_leaves_the_aggregate(machine: Machine) -> None:
    machine.rounds.tick(running=True)
    deliver(machine, "a", np.full(SIZE, 100.0))
    deliver(machine, "b", np.full(SIZE, 1.0))
    assert machine.rounds.withdraw("a")
    assert machine.open().reported == {"b": 10}
    deliver(machine, "c", np.full(SIZE, 3.0))
    np.testing.assert_allclose(version(machine, 1), np.full(SIZE, 2.0))


def test_failures_count_until_max_attempts_pause_the_job_and_a_start_gives_fresh_attempts(machine: Machine) -> None:
    for attempt in (1, 2):
        machine.rounds.tick(running=True)
        assert machine.fail_attempt() is None and machine.rounds.failures == attempt
    machine.rounds.tick(running=True)
    deliver(machine, "a", np.ones(SIZE))
    assert machine.fail_attempt() == JobEnd(JobState.PAUSED, "round 1 failed 3 times: deadline passed with 1 of 3 "
                                                             "updates, minimum 2")
    assert [machine.row(a)[1]["failures"] for a in (1, 2, 3)] == [1.0, 2.0, 3.0]
    machine.rounds.restart_counting()
    machine.rounds.tick(running=True)
    assert machine.open().attempt == 4
    assert machine.fail_attempt() is None and machine.rounds.failures == 1


def test_a_closed_round_resets_the_count_for_the_next(machine: Machine) -> None:
    machine.rounds.tick(running=True)
    machine.fail_attempt()
    machine.rounds.tick(running=True)
    for name in machine.open().selected:
        deliver(machine, name, np.ones(SIZE))
    assert machine.row(2)[0] == "done"
    assert (machine.rounds.next_attempt, machine.rounds.failures) == (1, 0)
    machine.rounds.tick(running=True)
    assert (machine.open().number, machine.open().attempt) == (2, 1)


def test_the_last_round_ends_the_job_done(tmp_path: Path) -> None:
    m = plain_machine(tmp_path, rounds=1)
    m.rounds.tick(running=True)
    deliver(m, "a", np.ones(SIZE))
    deliver(m, "b", np.ones(SIZE))
    assert deliver(m, "c", np.ones(SIZE)) == JobEnd(JobState.DONE, "all rounds completed")
    assert m.rounds.tick(running=True) is None and m.rounds.open is None  # no round 2
    m.store.close()


def test_cancel_closes_the_open_attempt_without_counting(machine: Machine) -> None:
    machine.rounds.tick(running=True)
    machine.rounds.cancel()
    assert machine.rounds.open is None and machine.rounds.failures == 0
    assert machine.row(1) == ("failed", {"cancelled": 1.0})


# ---- deciding on an encrypted Gram matrix --------------------------------------------------------------------
def gram_machine(tmp_path: Path, offload: Offload = inline, max_attempts: int = 3, **job: object) -> Machine:
    """An encrypted job whose norm-bounding defence decides on the Gram matrix of all three members' updates."""
    settings: dict[str, object] = {"rounds": 1, "participants_per_round": 3, "min_participants": 3,
                                   "round_deadline_s": DEADLINE_S, "aggregator": "norm_bound", **job}
    config = dataclasses.replace(tiny_job(tmp_path, **settings), he=HESection(enabled=True, mode="single_key"),
                                 robust=RobustSection(max_malicious=1))
    secret = SecretContext.create(config.he_params(gram_defence=True))
    store = Store(tmp_path / "state.sqlite")
    members = ("a", "b", "c")
    keys = dealt_keys(store, JOB, secret, members, evaluation=True)
    store.save_prompt(JOB, 0, CKKS, encrypted_initial(secret, JOB).data)
    accumulator = GramAccumulator(keys, lambda: SIZE, NormBound(config.robust))
    made = build(tmp_path, config, accumulator, store, Clock(), members, keys, offload, max_attempts)
    return dataclasses.replace(made, secret=secret)


def deliver_encrypted(m: Machine, participant_id: str) -> JobEnd | None:
    assert m.secret is not None
    delta, n = DELTAS[participant_id]
    r = m.open()
    payload = encrypted_update(m.secret, JOB, r.number, delta, n, weight_slot=False)
    r.fold.add(participant_id, payload)
    m.rounds.report(participant_id, n, len(payload.data))
    return m.rounds.settle()


def answer(m: Machine, decryptor: str) -> list[float]:
    """What an honest decryptor sends back for the open attempt's Gram matrix."""
    assert m.secret is not None
    gram = m.rounds.decrypting(m.open().number)
    return decrypt_gram(m.secret, gram.request(decryptor), len(gram.order)).tolist()


def test_training_ends_in_deciding_under_a_renewed_deadline_twice(tmp_path: Path) -> None:
    offload = Deferred()
    m = gram_machine(tmp_path, offload)
    m.rounds.tick(running=True)
    m.clock.now += 10
    for name in "abc":
        assert deliver_encrypted(m, name) is None
    r = m.open()
    assert r.state is RoundState.DECIDING and r.gram is not None and r.gram.started
    with pytest.raises(StaleRound, match="no encrypted Gram matrix awaits decryption for round 1"):
        m.rounds.decrypting(1)  # not computed yet: nothing to hand to the decryptors
    assert r.deadline == m.clock() + DEADLINE_S == m.store.rounds(JOB)[0].deadline  # the step gets a full deadline
    assert m.row(1)[0] == "deciding" and len(offload.pending) == 1
    assert len(set(r.gram.decryptors)) == 2 and set(r.gram.decryptors) <= {"a", "b", "c"}
    m.clock.now += 20
    offload.finish()  # the matrix is back: the decryptors get a full deadline of their own
    assert m.rounds.decrypting(1) is r.gram and r.deadline == m.clock() + DEADLINE_S == m.store.rounds(JOB)[0].deadline
    m.clock.now = r.deadline - 0.001
    assert m.rounds.settle() is None and m.rounds.open is r  # nobody answered yet, the deadline is not reached


def test_a_failed_gram_computation_closes_the_attempt_with_its_reason(tmp_path: Path) -> None:
    offload = Deferred()
    m = gram_machine(tmp_path, offload, max_attempts=1)
    m.rounds.tick(running=True)
    for name in "abc":
        deliver_encrypted(m, name)
    _, done = offload.pending.pop()
    done(RuntimeError("scale out of bounds"))
    r = m.open()
    assert r.gram is not None and r.gram.failure == "the encrypted Gram matrix could not be computed: scale out of bounds"
    assert m.rounds.settle() == JobEnd(JobState.PAUSED, "round 1 failed 1 times: the encrypted Gram matrix could "
                                                        "not be computed: scale out of bounds")
    assert m.rounds.open is None and m.row(1)[0] == "failed" and m.store.latest_version(JOB) == 0


def test_silent_decryptors_fail_the_attempt_at_the_deadline_naming_them(tmp_path: Path) -> None:
    m = gram_machine(tmp_path, max_attempts=1)
    m.rounds.tick(running=True)
    for name in "abc":
        deliver_encrypted(m, name)
    r = m.open()
    assert r.gram is not None and r.gram.computed
    first, silent = r.gram.decryptors
    r.gram.answer(first, answer(m, first))
    assert m.rounds.settle() is None and r.gram.awaiting(silent) and not r.gram.awaiting(first)
    m.clock.now = r.deadline
    assert m.rounds.settle() == JobEnd(JobState.PAUSED, f"round 1 failed 1 times: Gram decryptors {silent} did not "
                                                        "answer before the deadline")
    assert m.store.decisions(JOB) == [] and m.store.latest_version(JOB) == 0


def test_fewer_than_two_online_key_holders_fail_the_attempt_at_the_close(tmp_path: Path) -> None:
    m = gram_machine(tmp_path, max_attempts=1, round_deadline_s=2 * OFFLINE_AFTER_S)
    m.rounds.tick(running=True)
    m.clock.now += OFFLINE_AFTER_S + 1
    m.roster.touch("c", m.clock())  # a and b went quiet after uploading
    deliver_encrypted(m, "a")
    deliver_encrypted(m, "b")
    assert deliver_encrypted(m, "c") == JobEnd(JobState.PAUSED, "round 1 failed 1 times: an encrypted Gram matrix "
                                                                "needs 2 online key holders to decrypt it, 1 online")


def test_agreeing_decryptors_close_the_round_and_the_verdict_reaches_the_roster(tmp_path: Path) -> None:
    m = gram_machine(tmp_path)
    m.rounds.tick(running=True)
    for name in "abc":
        deliver_encrypted(m, name)
    r = m.open()
    assert r.gram is not None
    for decryptor in r.gram.decryptors:
        r.gram.answer(decryptor, answer(m, decryptor))
    assert m.rounds.settle() is None and r.state is RoundState.CHECKING  # the accepted sum is checked first
    assert r.check is not None and m.secret is not None
    secret = m.secret
    for checker in r.check.checkers:
        r.check.answer(checker, [check(secret, data, SIZE, masked) for masked, data in unpack_bundle(
            r.check.request(checker))])
    assert m.rounds.settle() == JobEnd(JobState.DONE, "all rounds completed")
    assert {(d.participant_id, d.accepted, d.attempt) for d in m.store.decisions(JOB)} == {
        ("a", True, 1), ("b", True, 1), ("c", False, 1)}
    assert m.roster.streaks == {"a": 0, "b": 0, "c": 1}
    state, summary = m.row(1)
    assert state == "done" and (summary["accepted"], summary["rejected"], summary["updates"]) == (2.0, 1.0, 3.0)
