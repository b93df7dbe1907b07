"""Cohort discovery under HE, in the round state machine with real CKKS ciphertexts and a real SQLite file: the
encrypted Gram matrix of the discovery round's updates, decrypted by two key holders, gives the plaintext
assignment; a lying or silent decryptor postpones discovery (never a wrong assignment) while the round
completes; the assignment survives a restart."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from fedprompt.config import HESection, JobConfig, LevelsSection, dump_toml, parse_toml
from fedprompt.coordinator.cohorts import DEFAULT_COHORT
from fedprompt.coordinator.jobs import JobManager
from fedprompt.coordinator.recovery import restore_job
from fedprompt.coordinator.runtime import JobRuntime
from fedprompt.coordinator.store import Store
from fedprompt.crypto.ckks import ENCODING as CKKS
from fedprompt.crypto.ckks import SecretContext
from fedprompt.crypto.gram import EVALUATION_KEYS, decrypt_gram, evaluation_keys
from fedprompt.protocol import Payload, TaskKind
from fedprompt.wire.levels import COHORTS_PART, encoding, pack
from tests.fakes import (
    Clock,
    E,
    G,
    answer_checks,
    encrypted_levels_update,
    exchange_key,
    levels_update,
    relabelled,
)
from tests.support import open_round, stored_parts, tiny_job

MEMBERS = ("a", "b", "c", "d", "e", "f")
PLANTED = {"a": 0, "b": 1, "c": 0, "d": 1, "e": 1, "f": 0}
WEIGHTS = {"a": 12, "b": 40, "c": 7, "d": 25, "e": 3, "f": 30}


#: Cohort 0 mixes small and large updates, cohort 1 has only small ones: by angle (cosine) the cohorts are
#: {a, c, f} and {b, d, e}; by distance a would join b, d, e.  So a Gram matrix off by a constant (e.g. the
#: weight slots left in) would cluster differently.
SCALES = {"a": 0.2, "b": 0.3, "c": 3.0, "d": 0.25, "e": 0.35, "f": 2.5}


def _deltas(seed: int = 0) -> dict[str, np.ndarray]:
    """Two planted cohorts of small updates (norms 0.01-0.2, like a round of prompt tuning)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=0.02, size=(2, G + E))
    return {p: SCALES[p] * (centres[c] + rng.normal(scale=0.006, size=G + E)) for p, c in PLANTED.items()}


def _config(tmp_path: Path, he: bool, num_cohorts: int = 2, min_participants: int = len(MEMBERS)) -> JobConfig:
    base = tiny_job(tmp_path, rounds=3, participants_per_round=len(MEMBERS), min_participants=min_participants,
                    round_deadline_s=30.0)
    levels = LevelsSection(enabled=True, global_tokens=2, expert_tokens=1, personal_tokens=1,
                           cohorts_from="discover", num_cohorts=num_cohorts, discover_round=1)
    return dataclasses.replace(base, levels=levels, he=HESection(enabled=he, mode="single_key"))


def _plaintext_assignment(tmp_path: Path, deltas: dict[str, np.ndarray]) -> dict[str, str]:
    config = _config(tmp_path, he=False)
    jobs = JobManager(Store(":memory:"), clock=Clock())
    job = jobs.job(jobs.create_job(dump_toml(config)))
    for p in MEMBERS:
        job.join(p, 100, 5, G + E)

    job.submit("a", levels_update(job.job_id, 0, np.zeros(G), np.zeros(E), 0))
    job.start()
    job.tick()
    for p, d in deltas.items():
        job.submit(p, levels_update(job.job_id, 1, d[:G], d[G:], WEIGHTS[p]))
    assert job.levels is not None
    return dict(job.levels.plan.assigned)


class EncryptedJob:
    """An encrypted levelled discover job with six key holders; ``secret`` is the key every holder has."""

    def __init__(self, tmp_path: Path, num_cohorts: int = 2, min_participants: int = len(MEMBERS)) -> None:
        self.clock = Clock()
        self.store = Store(tmp_path / "state.sqlite")
        self.jobs = JobManager(self.store, clock=self.clock)
        self.config = _config(tmp_path, he=True, num_cohorts=num_cohorts, min_participants=min_participants)
        with capture_logs():  # bind the job's logger under structlog's test configuration
            self.job: JobRuntime = self.jobs.job(self.jobs.create_job(dump_toml(self.config)))
        job = self.job
        for p in MEMBERS:
            job.join(p, 100, 5, G + E, exchange_key())
        self.secret = SecretContext.create(self.config.he_params(gram_defence=False))
        job.relay.publish_context("a", self.secret.public_bytes(), self.secret.key_id)
        job.start()
        job.submit("a", Payload(job.job_id, 0, EVALUATION_KEYS, 0, evaluation_keys(self.secret)))
        for p in MEMBERS[1:]:
            job.relay.share_key("a", p, b"sealed for " + p.encode())  # blobs the coordinator cannot open
        job.submit("a", self.upload(0, np.zeros(G + E), 1))
        job.tick()

    def upload(self, round_: int, delta: np.ndarray, n: int) -> Payload:
        """What a levelled site sends under HE: each part encrypted as ``n * part`` with ``n`` in its weight slot."""
        return encrypted_levels_update(self.secret, self.job.job_id, round_, delta[:G], delta[G:], n)

    def submit_round(self, round_: int, deltas: dict[str, np.ndarray]) -> None:
        assert self.job.open is not None and self.job.open.number == round_
        for p, d in deltas.items():
            self.job.submit(p, self.upload(round_, d, WEIGHTS[p]))

    def answer(self, who: str, round_: int) -> list[float]:
        payload = self.job.gram_payload(who, round_)
        return decrypt_gram(self.secret, payload.data, payload.vector_size).tolist()

    def check(self) -> int:
        """Play the two key holders that check each aggregate before it becomes a version."""
        return answer_checks(self.job, self.secret)

    def mean(self, part: tuple[int, bytes]) -> np.ndarray:
        total, weight = self.secret.decrypt(part[1], part[0])
        return total / weight


@pytest.fixture
def encrypted(tmp_path: Path) -> EncryptedJob:
    return EncryptedJob(tmp_path)


def test_encrypted_discovery_finds_the_plaintext_cohorts_and_survives_a_restart(encrypted: EncryptedJob,
                                                                                 tmp_path: Path) -> None:
    deltas = _deltas()
    job = encrypted.job
    assert job.levels is not None
    assert job.open is not None and job.open.gram is not None  # the discovery round keeps ciphertexts
    encrypted.submit_round(1, deltas)
    gram = job.open.gram
    assert gram.started and job.levels.plan.assigned == {}  # waits for the decryptors before assigning
    assert all(job.next_task(d).kind is TaskKind.DECRYPT for d in gram.decryptors)
    for d in gram.decryptors:
        job.report_gram(d, 1, encrypted.answer(d, 1))
    assert job.latest_version() == 0 and encrypted.check() == 1
    assert open_round(job) is None and job.latest_version() == 1
    expected = _plaintext_assignment(tmp_path, deltas)
    assert job.levels.plan.assigned == expected
    assert {frozenset(p for p in MEMBERS if expected[p] == c) for c in set(expected.values())} == {
        frozenset("acf"), frozenset("bde")}
    stored = stored_parts(job, 1)
    assert json.loads(stored[COHORTS_PART][1]) == expected
    # every new cohort starts from this round's shared expert sum, as in plaintext
    shared = sum(deltas[p][G:] * WEIGHTS[p] for p in MEMBERS) / sum(WEIGHTS.values())
    for cohort in ("cohort-1", "cohort-2"):
        assert stored[f"expert:{cohort}"] == stored[f"expert:{DEFAULT_COHORT}"]
        assert encrypted.mean(stored[f"expert:{cohort}"]) == pytest.approx(shared, abs=1e-6)
    summary = job.view().rounds[0].metrics
    assert summary["cohorts_discovered"] == 2.0 and summary["gram_seconds"] > 0
    # round 2 folds as usual, one expert sum per discovered cohort, no Gram matrix any more
    job.tick()
    second = open_round(job)
    assert second is not None and second.gram is None
    encrypted.submit_round(2, deltas)
    assert encrypted.check() == 1
    stored = stored_parts(job, 2)
    assert {"expert:cohort-1", "expert:cohort-2"} <= set(stored) and f"expert:{DEFAULT_COHORT}" not in stored
    first = [p for p in MEMBERS if expected[p] == "cohort-1"]
    assert encrypted.mean(stored["expert:cohort-1"]) == pytest.approx(
        sum(deltas[p][G:] * WEIGHTS[p] for p in first) / sum(WEIGHTS[p] for p in first), abs=1e-6)
    restored = restore_job(encrypted.jobs, encrypted.store.jobs()[0])
    assert restored.levels is not None and restored.levels.plan.assigned == expected
    encrypted.store.close()


def test_a_discovery_round_refused_by_its_check_assigns_nothing_and_its_retry_discovers(tmp_path: Path) -> None:
    """f's update is under another key relabelled with the job's: the discovery attempt clusters a Gram matrix
    with f's garbage in it, and its aggregate fails the key holders' check.  That attempt's assignment must not
    take effect (it would steer every later round); the audit attempt finds f, and the attempt after it
    discovers among the five honest members."""
    encrypted = EncryptedJob(tmp_path, min_participants=len(MEMBERS) - 1)
    deltas = _deltas()
    job = encrypted.job
    assert job.levels is not None
    foreign = SecretContext.create(encrypted.config.he_params(gram_defence=False))
    key_id = encrypted.secret.key_id

    def poisoned(round_: int) -> Payload:
        d, n = deltas["f"], WEIGHTS["f"]
        parts = {"global": (G, relabelled(foreign.encrypt(d[:G] * n, n), key_id)),
                 "expert": (E, relabelled(foreign.encrypt(d[G:] * n, n), key_id))}
        return Payload(job.job_id, round_, encoding(CKKS), G + E, pack(parts), n)

    for attempt in (1, 2, 3):
        r = open_round(job)
        assert r is not None and r.attempt == attempt and r.gram is not None
        for p in r.selected:
            job.submit(p, poisoned(1) if p == "f" else encrypted.upload(1, deltas[p], WEIGHTS[p]))
        for d in r.gram.decryptors:
            job.report_gram(d, 1, encrypted.answer(d, 1))
        assert encrypted.check() == (2 if attempt == 2 else 1)
        if attempt < 3:
            assert job.latest_version() == 0 and job.levels.plan.assigned == {}
        job.tick()
    assert job.roster.quarantined() == ("f",) and job.latest_version() == 1
    assigned = job.levels.plan.assigned
    assert sorted(assigned) == ["a", "b", "c", "d", "e"] and len(set(assigned.values())) == 2
    assert json.loads(stored_parts(job, 1)[COHORTS_PART][1]) == assigned
    encrypted.store.close()


def test_a_lying_decryptor_postpones_discovery_and_the_round_completes(encrypted: EncryptedJob) -> None:
    deltas = _deltas()
    job = encrypted.job
    assert job.levels is not None
    encrypted.submit_round(1, deltas)
    assert job.open is not None and job.open.gram is not None
    honest, liar = job.open.gram.decryptors
    job.report_gram(honest, 1, encrypted.answer(honest, 1))
    lie = encrypted.answer(liar, 1)
    lie[1] = -lie[1]  # a and b made to look alike
    with capture_logs() as logs:
        job.report_gram(liar, 1, lie)
    postponed = [e for e in logs if e["event"] == "cohort discovery postponed"]
    assert len(postponed) == 1 and postponed[0]["log_level"] == "warning"
    assert f"decryptors {honest} and {liar} disagree on 1 of 21" in postponed[0]["reason"]
    assert encrypted.check() == 1
    assert job.levels.plan.assigned == {} and job.latest_version() == 1  # no assignment, the round completed
    stored = stored_parts(job, 1)
    assert json.loads(stored[COHORTS_PART][1]) == {} and set(stored) >= {"global", f"expert:{DEFAULT_COHORT}"}
    assert encrypted.mean(stored["global"]) == pytest.approx(
        sum(deltas[p][:G] * WEIGHTS[p] for p in MEMBERS) / sum(WEIGHTS.values()), abs=1e-6)
    # postponed to the next round, which discovers with honest decryptors
    job.tick()
    assert job.open is not None and job.open.number == 2 and job.open.gram is not None
    encrypted.submit_round(2, deltas)
    for d in job.open.gram.decryptors:
        job.report_gram(d, 2, encrypted.answer(d, 2))
    assert encrypted.check() == 1
    assert len(set(job.levels.plan.assigned.values())) == 2 and job.latest_version() == 2
    encrypted.store.close()


def test_a_silent_decryptor_postpones_discovery_at_the_deadline(encrypted: EncryptedJob) -> None:
    job = encrypted.job
    assert job.levels is not None
    encrypted.submit_round(1, _deltas())
    assert job.open is not None and job.open.gram is not None
    first, silent = job.open.gram.decryptors
    job.report_gram(first, 1, encrypted.answer(first, 1))
    encrypted.clock.now = job.open.deadline + 1
    with capture_logs() as logs:
        job.tick()
    postponed = [e for e in logs if e["event"] == "cohort discovery postponed"]
    assert len(postponed) == 1 and f"Gram decryptors {silent} did not answer" in postponed[0]["reason"]
    assert encrypted.check() == 1
    job.tick()
    rounds = encrypted.store.rounds(job.job_id)
    assert [(r.round, r.state) for r in rounds][:1] == [(1, "done")] and job.levels.plan.assigned == {}
    assert job.open is not None and job.open.number == 2 and job.open.gram is not None  # tried again
    encrypted.store.close()


def test_too_few_updates_postpone_discovery_before_any_gram_matrix(tmp_path: Path) -> None:
    encrypted = EncryptedJob(tmp_path, num_cohorts=len(MEMBERS) + 1)
    job = encrypted.job
    assert job.levels is not None
    with capture_logs() as logs:
        encrypted.submit_round(1, _deltas())
    events = [e["event"] for e in logs]
    assert "encrypted Gram matrix computed" not in events  # the decryptors learn nothing for nothing
    postponed = [e for e in logs if e["event"] == "cohort discovery postponed"]
    assert [e["reason"] for e in postponed] == ["too few updates (6) for 7 cohorts"]
    assert encrypted.check() == 1
    assert job.latest_version() == 1 and job.levels.plan.assigned == {}
    encrypted.store.close()


def test_config_accepts_discovery_under_he_with_a_chain_for_evaluation_keys() -> None:
    text = ("[model]\nprompt_length = 4\n[he]\nenabled = true\nmode = 'single_key'\n[levels]\nenabled = true\nglobal_tokens = 2\n"
            "expert_tokens = 1\npersonal_tokens = 1\ncohorts_from = 'discover'\n")
    config = parse_toml(text, JobConfig)
    assert config.encrypted_discovery
    params = config.he_params(gram_defence=False)
    assert params.multiplicative and params.poly_modulus_degree == 8192  # relinearisation + Galois keys
    assert not parse_toml(text.replace("'discover'", "'admin'\n[[levels.cohorts]]\nname = 'x'\n"
                                       "members = ['a', 'b']"), JobConfig).he_params(gram_defence=False).multiplicative
