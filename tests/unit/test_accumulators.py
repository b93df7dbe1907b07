"""The accumulators and their folds as plain objects (``coordinator.accumulators``, ``coordinator.levels``), on a
real SQLite store and real CKKS keys: what each fold makes of a round's updates, and when it refuses to make a
version at all."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fedprompt.config import MIN_HE_COHORT, HESection, JobConfig, RobustSection
from fedprompt.coordinator.accumulators import (
    EncryptedAccumulator,
    EncryptedFold,
    GramAccumulator,
    GramFold,
    PlainAccumulator,
    PlainFold,
)
from fedprompt.coordinator.aggregation import FedAvg, NormBound
from fedprompt.coordinator.cohorts import DEFAULT_COHORT
from fedprompt.coordinator.hegram import GramRound
from fedprompt.coordinator.levels import EncryptedLevelsFold, LevelledAccumulator, PlainLevelsFold
from fedprompt.coordinator.store import Store
from fedprompt.crypto.ckks import SecretContext
from fedprompt.crypto.errors import InvalidCiphertext
from fedprompt.crypto.gram import decrypt_gram
from fedprompt.errors import InvalidUpdate, PreconditionFailed
from fedprompt.protocol import Payload
from fedprompt.wire.levels import COHORTS_PART, pack, unpack
from fedprompt.wire.payload import FLOAT32, decode_vector, encode_vector
from tests.fakes import OUTLIER_DELTAS as DELTAS
from tests.fakes import (
    SIZE,
    E,
    G,
    dealt_keys,
    encrypted_initial,
    encrypted_levels_update,
    encrypted_update,
    levels_update,
    plain_update,
)
from tests.support import levelled, tiny_job

JOB = "job-1"
MEMBERS = ("a", "b", "c")
NORM_BOUND = NormBound(RobustSection(max_malicious=1))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "state.sqlite")
    yield store
    store.close()


def decoded(data: bytes, size: int = SIZE) -> np.ndarray:
    return decode_vector(Payload(JOB, 1, FLOAT32, size, data), size)


# ---- plaintext ----------------------------------------------------------------------------------------------
def plain(store: Store, aggregator: FedAvg | NormBound, start: np.ndarray) -> PlainAccumulator:
    store.save_prompt(JOB, 0, FLOAT32, encode_vector(start.astype(np.float32)))
    return PlainAccumulator(aggregator, JOB, store, lambda: SIZE)


def test_a_plain_fold_aggregates_its_updates_from_the_global_they_started_from(store: Store) -> None:
    accumulator = plain(store, FedAvg(), np.ones(SIZE))
    fold = accumulator.fold(1)
    assert isinstance(fold, PlainFold) and fold.gram is None and fold.gram_refusal() == ""
    np.testing.assert_array_equal(fold.start, np.ones(SIZE, np.float32))
    fold.add("a", plain_update(JOB, 1, np.full(SIZE, 1.0, np.float32), 10))
    fold.add("b", plain_update(JOB, 1, np.full(SIZE, 4.0, np.float32), 30))
    fold.add("c", plain_update(JOB, 1, np.full(SIZE, 50.0, np.float32), 10))
    fold.discard("c")  # expelled before the close: its update leaves the aggregate
    outcome = fold.close()
    assert outcome.refusal == "" and outcome.decision is None
    np.testing.assert_allclose(decoded(outcome.data), np.full(SIZE, 1 + (10 * 1 + 30 * 4) / 40), rtol=1e-6)
    assert outcome.metrics["update_norm_max"] == pytest.approx(4 * np.sqrt(SIZE))


def test_a_plain_fold_refuses_an_update_it_cannot_use_and_keeps_the_others(store: Store) -> None:
    fold = plain(store, FedAvg(), np.zeros(SIZE)).fold(1)
    fold.add("a", plain_update(JOB, 1, np.ones(SIZE, np.float32)))
    with pytest.raises(InvalidUpdate):
        fold.add("b", plain_update(JOB, 1, np.ones(SIZE + 1, np.float32)))
    nan = np.ones(SIZE, np.float32)
    nan[3] = np.nan
    with pytest.raises(InvalidUpdate, match="NaN"):
        fold.add("b", plain_update(JOB, 1, nan))
    np.testing.assert_allclose(decoded(fold.close().data), np.ones(SIZE))


def test_a_plain_fold_starts_only_from_a_stored_version(store: Store) -> None:
    accumulator = plain(store, FedAvg(), np.zeros(SIZE))
    with pytest.raises(PreconditionFailed, match="job job-1 has no global version 1 yet"):
        accumulator.fold(2)


def test_a_plain_fold_fails_the_attempt_when_the_robust_assumption_does_not_hold(store: Store) -> None:
    fold = plain(store, NORM_BOUND, np.zeros(SIZE)).fold(1)
    for name in ("a", "b"):  # norm bounding with f = 1 needs 2f + 1 = 3 updates
        delta, n = DELTAS[name]
        fold.add(name, plain_update(JOB, 1, delta.astype(np.float32), n))
    outcome = fold.close()
    assert outcome.refusal == ("norm_bound refused: norm bounding needs at least 3 updates for f=1 (honest majority "
                               "for the median norm); got 2")
    assert (outcome.data, outcome.decision, outcome.metrics) == (b"", None, {})


def test_a_plain_fold_with_a_robust_rule_returns_its_verdict(store: Store) -> None:
    fold = plain(store, NORM_BOUND, np.zeros(SIZE)).fold(1)
    for name, (delta, n) in DELTAS.items():
        fold.add(name, plain_update(JOB, 1, delta.astype(np.float32), n))
    outcome = fold.close()
    assert outcome.decision is not None and outcome.decision.rejected == ("c",)
    expected = (10 * DELTAS["a"][0] + 20 * DELTAS["b"][0]) / 30
    np.testing.assert_allclose(decoded(outcome.data), expected, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the overflow this test provokes
def test_a_plain_fold_refuses_an_aggregate_that_is_not_finite(store: Store) -> None:
    fold = plain(store, FedAvg(), np.full(SIZE, 3e38)).fold(1)  # finite float32, near its largest value
    fold.add("a", plain_update(JOB, 1, np.full(SIZE, 3e38, np.float32)))
    assert fold.close().refusal == "aggregate is not finite"


# ---- encrypted ----------------------------------------------------------------------------------------------
def he_config(tmp_path: Path) -> JobConfig:
    return dataclasses.replace(tiny_job(tmp_path, aggregator="norm_bound"), he=HESection(enabled=True, mode="single_key"),
                               robust=RobustSection(max_malicious=1))


def test_an_encrypted_fold_sum_decrypts_to_the_weighted_sum_of_its_updates(tmp_path: Path, store: Store) -> None:
    secret = SecretContext.create(he_config(tmp_path).he.params())
    accumulator = EncryptedAccumulator(dealt_keys(store, JOB, secret, MEMBERS), lambda: SIZE)
    accumulator.check_initial(encrypted_initial(secret, JOB))
    assert accumulator.max_bytes(SIZE) == secret.expected_size(SIZE)
    assert "encrypted" in accumulator.export_refusal(JOB)
    fold = accumulator.fold(1)
    assert isinstance(fold, EncryptedFold) and fold.gram is None
    for name, (delta, n) in DELTAS.items():
        fold.add(name, encrypted_update(secret, JOB, 1, delta, n))
    other = SecretContext.create(secret.params)
    with pytest.raises(InvalidCiphertext, match="another key"):
        fold.add("d", encrypted_update(other, JOB, 1, DELTAS["a"][0], 10))
    assert fold.count == 3
    total, weight = secret.decrypt(fold.close().data, SIZE)
    assert weight == 60
    np.testing.assert_allclose(total, sum(n * d for d, n in DELTAS.values()), atol=1e-4)


@dataclass
class Kept:
    """A Gram fold holding a, b and c's encrypted updates, its kept ciphertexts, and the key every member holds."""

    fold: GramFold
    gram: GramRound
    secret: SecretContext

    def decide(self) -> list[np.ndarray]:
        """Freeze the updates (decryptors a and b), compute their encrypted Gram matrix, decrypt it once each."""
        self.gram.begin(("a", "b"))
        self.gram.payload = self.gram.compute()
        return [decrypt_gram(self.secret, self.gram.request(d), len(self.gram.order)) for d in self.gram.decryptors]


def gram_fold(tmp_path: Path, store: Store) -> Kept:
    secret = SecretContext.create(he_config(tmp_path).he_params(gram_defence=True))
    accumulator = GramAccumulator(dealt_keys(store, JOB, secret, MEMBERS, evaluation=True), lambda: SIZE, NORM_BOUND)
    fold = accumulator.fold(1)
    assert isinstance(fold, GramFold) and fold.gram is not None
    for name, (delta, n) in DELTAS.items():
        fold.add(name, encrypted_update(secret, JOB, 1, delta, n, weight_slot=False))
    return Kept(fold, fold.gram, secret)


def test_a_gram_fold_judges_the_agreed_matrix_and_sums_only_the_accepted(tmp_path: Path, store: Store) -> None:
    kept = gram_fold(tmp_path, store)
    assert kept.fold.gram_refusal() == ""
    for decryptor, scalars in zip(("a", "b"), kept.decide(), strict=True):
        kept.gram.answer(decryptor, scalars.tolist())
    outcome = kept.fold.close()
    assert outcome.refusal == "" and outcome.decision is not None
    assert (outcome.decision.accepted, outcome.decision.rejected) == (("a", "b"), ("c",))
    assert (outcome.metrics["accepted"], outcome.metrics["rejected"]) == (2.0, 1.0)
    assert outcome.metrics["gram_seconds"] > 0
    total, weight = kept.secret.decrypt(outcome.data, SIZE)
    assert weight == 30  # the accepted example counts, added by the coordinator
    np.testing.assert_allclose(total, 10 * DELTAS["a"][0] + 20 * DELTAS["b"][0], atol=1e-4)


def test_a_gram_fold_fails_closed_when_its_decryptors_disagree(tmp_path: Path, store: Store) -> None:
    kept = gram_fold(tmp_path, store)
    honest, lie = kept.decide()
    lie[-1] /= 100.0  # c's squared norm shrunk: its scaled update would pass norm bounding
    kept.gram.answer("a", honest.tolist())
    kept.gram.answer("b", lie.tolist())
    outcome = kept.fold.close()
    assert outcome.refusal.startswith("robust decision refused: decryptors a and b disagree on 1 of 6")
    assert (outcome.data, outcome.decision) == (b"", None)


def test_a_gram_fold_without_a_matrix_fails_with_the_reason_it_was_postponed(tmp_path: Path, store: Store) -> None:
    outcome = gram_fold(tmp_path, store).fold.close("Gram decryptors b did not answer before the deadline")
    assert outcome.refusal == "Gram decryptors b did not answer before the deadline" and outcome.data == b""


def test_a_gram_fold_gives_back_an_update_only_until_its_matrix_is_begun(tmp_path: Path, store: Store) -> None:
    kept = gram_fold(tmp_path, store)
    kept.fold.discard("c")
    assert list(kept.gram.updates) == ["a", "b"]
    kept.fold.add("c", encrypted_update(kept.secret, JOB, 1, *DELTAS["c"], weight_slot=False))
    kept.gram.begin(("a", "b"))
    kept.fold.discard("c")  # frozen: the matrix covers c's update, so it stays
    assert kept.gram.order == ("a", "b", "c") and "c" in kept.gram.updates


# ---- levels -------------------------------------------------------------------------------------------------
def test_plain_levels_average_each_cohort_over_the_members_the_global_decision_accepted(tmp_path: Path,
                                                                                        store: Store) -> None:
    config = levelled(tiny_job(tmp_path), ("x", ("a", "b")), ("y", ("c", "d")), ("z", ("f",)))
    initial = levels_update(JOB, 0, np.ones(G), np.full(E, 2.0), 0)
    store.save_prompt(JOB, 0, initial.encoding, initial.data)
    accumulator = LevelledAccumulator(JOB, config, store, None, NORM_BOUND)
    fold = accumulator.fold(1)
    assert isinstance(fold, PlainLevelsFold)
    updates = {"a": (0.1, 1.0, 10), "b": (9.0, 50.0, 10), "c": (0.12, 3.0, 20), "d": (0.11, 6.0, 10),
               "e": (0.1, 4.0, 10)}  # b's global part is far too large; e is in no cohort
    for name, (g, e, n) in updates.items():
        fold.add(name, levels_update(JOB, 1, np.full(G, g), np.full(E, e), n))
    outcome = fold.close()
    assert outcome.decision is not None and outcome.decision.rejected == ("b",)
    parts = unpack(outcome.data)
    assert list(parts) == ["global", "expert:_default", "expert:x", "expert:y", "expert:z", COHORTS_PART]

    def level(name: str, size: int) -> np.ndarray:
        assert parts[name][0] == size
        return decoded(parts[name][1], size)

    np.testing.assert_allclose(level("global", G), 1 + (10 * 0.1 + 20 * 0.12 + 10 * 0.11 + 10 * 0.1) / 50, rtol=1e-6)
    np.testing.assert_allclose(level("expert:x", E), 2 + 1.0, rtol=1e-6)  # b's expert part went with its rejection
    np.testing.assert_allclose(level("expert:y", E), 2 + (20 * 3 + 10 * 6) / 30, rtol=1e-6)
    np.testing.assert_allclose(level(f"expert:{DEFAULT_COHORT}", E), 2 + 4.0, rtol=1e-6)
    np.testing.assert_allclose(level("expert:z", E), 2.0)  # no update in cohort z: it keeps its expert prompt
    assert outcome.metrics["expert_cohorts_updated"] == 3.0


@dataclass
class EncryptedLevels:
    """The levelled accumulator of an encrypted job, and the key every member holds."""

    accumulator: LevelledAccumulator
    secret: SecretContext


def encrypted_levels(tmp_path: Path, store: Store) -> EncryptedLevels:
    """An encrypted levelled job with cohorts x = {a, b} and y = {c, d}; version 0 stored."""
    config = dataclasses.replace(levelled(tiny_job(tmp_path), ("x", ("a", "b")), ("y", ("c", "d"))),
                                 he=HESection(enabled=True, mode="single_key"))
    secret = SecretContext.create(config.he_params(gram_defence=False))
    keys = dealt_keys(store, JOB, secret, ("a", "b", "c", "d"))
    initial = encrypted_levels_update(secret, JOB, 0, np.zeros(G), np.zeros(E), 1)
    store.save_prompt(JOB, 0, initial.encoding, initial.data)
    return EncryptedLevels(LevelledAccumulator(JOB, config, store, keys, FedAvg()), secret)


LEVEL_DELTAS = {"a": (1.0, 1.0, 10), "b": (3.0, 3.0, 30), "c": (5.0, -2.0, 10), "d": (7.0, 4.0, 20)}


def test_encrypted_levels_withhold_a_cohort_sum_of_fewer_than_min_he_cohort_updates(tmp_path: Path,
                                                                                   store: Store) -> None:
    made = encrypted_levels(tmp_path, store)
    accumulator, secret = made.accumulator, made.secret
    fold = accumulator.fold(1)
    assert isinstance(fold, EncryptedLevelsFold) and fold.gram is None  # admin cohorts: nothing to discover
    for name in ("a", "b", "c"):  # c is alone in cohort y
        g, e, n = LEVEL_DELTAS[name]
        fold.add(name, encrypted_levels_update(secret, JOB, 1, np.full(G, g), np.full(E, e), n))
    outcome = fold.close()
    parts = unpack(outcome.data)
    assert list(parts) == ["global", "expert:x"] and MIN_HE_COHORT == 2
    assert (outcome.metrics["expert_cohorts_updated"], outcome.metrics["expert_cohorts_withheld"]) == (1.0, 1.0)
    total, weight = secret.decrypt(parts["global"][1], G)
    assert weight == 50 and np.allclose(total, 10 * 1 + 30 * 3 + 10 * 5, atol=1e-4)
    total, weight = secret.decrypt(parts["expert:x"][1], E)
    assert weight == 40 and np.allclose(total, 10 * 1 + 30 * 3, atol=1e-4)
    assert accumulator.view("c", Payload(JOB, 1, accumulator.encoding, G + E, outcome.data)).data == pack(
        {"global": parts["global"], "expert": (E, b"")})  # y's expert level is unchanged for its members


def test_encrypted_levels_publish_a_cohort_sum_of_min_he_cohort_updates(tmp_path: Path, store: Store) -> None:
    made = encrypted_levels(tmp_path, store)
    accumulator, secret = made.accumulator, made.secret
    fold = accumulator.fold(1)
    for name, (g, e, n) in LEVEL_DELTAS.items():
        fold.add(name, encrypted_levels_update(secret, JOB, 1, np.full(G, g), np.full(E, e), n))
    parts = unpack(fold.close().data)
    assert list(parts) == ["global", "expert:x", "expert:y"]
    total, weight = secret.decrypt(parts["expert:y"][1], E)
    assert weight == 30 and np.allclose(total, 10 * -2 + 20 * 4, atol=1e-4)


def test_an_encrypted_levelled_update_with_a_bad_part_folds_no_part(tmp_path: Path, store: Store) -> None:
    made = encrypted_levels(tmp_path, store)
    accumulator, secret = made.accumulator, made.secret
    fold = accumulator.fold(1)
    fold.add("a", encrypted_levels_update(secret, JOB, 1, np.full(G, 1.0), np.full(E, 1.0), 10))
    other = SecretContext.create(secret.params)
    good = unpack(encrypted_levels_update(secret, JOB, 1, np.full(G, 3.0), np.full(E, 3.0), 30).data)
    bad = unpack(encrypted_levels_update(other, JOB, 1, np.full(G, 3.0), np.full(E, 3.0), 30).data)
    mixed = Payload(JOB, 1, accumulator.encoding, G + E, pack({"global": good["global"], "expert": bad["expert"]}), 30)
    with pytest.raises(InvalidCiphertext, match="another key"):
        fold.add("b", mixed)
    total, weight = secret.decrypt(unpack(fold.close().data)["global"][1], G)
    assert weight == 10 and np.allclose(total, 10 * 1.0, atol=1e-4)  # b's valid global part was not folded either


def test_an_encrypted_levelled_attempt_without_updates_makes_no_version(tmp_path: Path, store: Store) -> None:
    assert encrypted_levels(tmp_path, store).accumulator.fold(1).close().refusal == "no encrypted update was folded in this attempt"
