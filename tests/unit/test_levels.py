"""Prompt levels (PLMM): config validation, the level container, cohort discovery and per-cohort aggregation at
the coordinator, in plaintext and with real CKKS ciphertexts (the levelled prompt of a model is in
``test_models``)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fedprompt.config import HESection, JobConfig, dump_toml, parse_toml
from fedprompt.coordinator.aggregation import job_aggregator
from fedprompt.coordinator.cohorts import DEFAULT_COHORT, discover_cohorts
from fedprompt.coordinator.jobs import JobManager
from fedprompt.coordinator.recovery import restore_job
from fedprompt.coordinator.runtime import JobRuntime
from fedprompt.coordinator.store import Store
from fedprompt.crypto.ckks import ENCODING, SecretContext
from fedprompt.errors import ConfigError, InvalidUpdate, PreconditionFailed
from fedprompt.protocol import Payload
from fedprompt.wire.levels import COHORTS_PART, encoding, pack, shared_parts, unpack
from fedprompt.wire.payload import FLOAT32, encode_vector
from tests.fakes import Clock, E, G, answer_checks, encrypted_levels_update, exchange_key, levels_update, relabelled
from tests.support import levelled, open_round, stored_parts, tiny_job


# ---- config -------------------------------------------------------------------------------------------
def _parse(levels: str, extra: str = "") -> JobConfig:
    return parse_toml(f"[model]\nprompt_length = 4\n{extra}\n[levels]\nenabled = true\nglobal_tokens = 2\n"
                      f"expert_tokens = 1\npersonal_tokens = 1\n{levels}", JobConfig)


@pytest.mark.parametrize(("levels", "extra", "key"), [
    ("colour = 1", "", "levels.colour: unknown key"),
    ("[[levels.cohorts]]\nname = 'x'\nmembers = ['a']\nweight = 2", "", "levels.cohorts[0].weight: unknown key"),
    ("[[levels.cohorts]]\nname = 'x'\nmembers = ['a']\n[[levels.cohorts]]\nname = 'y'\nmembers = ['a']", "",
     "levels.cohorts[1].members"),
    ("[[levels.cohorts]]\nname = '_x'\nmembers = ['a']", "", "levels.cohorts[0].name"),
    ("cohorts_from = 'magic'", "", "levels.cohorts_from"),
    ("cohorts_from = 'discover'\n[[levels.cohorts]]\nname = 'x'\nmembers = ['a']", "", "levels.cohorts:"),
    ("cohorts_from = 'discover'\ndiscover_round = 5", "[job]\nrounds = 5", "levels.discover_round"),
    ("cohorts_from = 'discover'", "[he]\nenabled = true\nmode = 'single_key'\n[job]\naggregator = 'norm_bound'", "job.aggregator"),
    ("[[levels.cohorts]]\nname = 'x'\nmembers = ['a']", "[he]\nenabled = true\nmode = 'single_key'",
     "levels.cohorts[0].members"),
    ("", "[dp]\nenabled = true\nnoise_multiplier = 1.0\nparticipant_noise_multiplier = 1.0",
     "dp.participant_noise_multiplier"),
    ("[[levels.cohorts]]\nname = 'x'\nmembers = ['a']", "[job]\nallowed_participants = ['b']",
     "levels.cohorts[0].members"),
])
def test_levels_config_names_the_bad_key(levels: str, extra: str, key: str) -> None:
    """At load, or (the aggregator's kind) when the coordinator creates the job."""
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        job_aggregator(_parse(levels, extra))


def test_prompt_length_must_equal_the_levels_sum() -> None:
    with pytest.raises(ConfigError, match="model.prompt_length: must equal .* = 4"):
        parse_toml("[model]\nprompt_length = 16\n[levels]\nenabled = true\nglobal_tokens = 2\nexpert_tokens = 1\n"
                   "personal_tokens = 1\ncohorts_from = 'discover'", JobConfig)


def test_coordinator_refuses_admin_levels_without_cohorts_and_hides_them_from_members(tmp_path: Path) -> None:
    jobs = JobManager(Store(":memory:"))
    with pytest.raises(ConfigError, match="levels.cohorts: .*at least one"):
        jobs.create_job(dump_toml(levelled(tiny_job(tmp_path))))
    job = jobs.job(jobs.create_job(dump_toml(levelled(tiny_job(tmp_path), ("x", ("site-secret", "b"))))))
    seen = job.describe("b").config_toml
    assert "site-secret" not in seen and parse_toml(seen, JobConfig).levels.enabled


# ---- container ----------------------------------------------------------------------------------------
def test_container_round_trips_and_refuses_malformed_data() -> None:
    data = pack({"global": (2, b"ab"), "expert": (1, b"c")})
    assert unpack(data) == {"global": (2, b"ab"), "expert": (1, b"c")}
    assert list(shared_parts(data, ("global", "expert"), {"global": 2, "expert": 1})) == ["global", "expert"]
    for bad in (b"junk", data[:-1], data + b"x", b"XXXXX" + data[5:]):
        with pytest.raises(InvalidUpdate):
            unpack(bad)
    with pytest.raises(InvalidUpdate, match="expected"):
        shared_parts(pack({"expert": (1, b"c"), "global": (2, b"ab")}), ("global", "expert"))
    with pytest.raises(InvalidUpdate, match="parameters"):
        shared_parts(data, ("global", "expert"), {"global": 3, "expert": 1})


# ---- cohort discovery ---------------------------------------------------------------------------------
def test_clustering_recovers_planted_cohorts_from_a_gram_matrix() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 64))
    planted = [0, 2, 1, 0, 1, 2, 2, 0, 1, 1]
    updates = np.stack([centres[c] * rng.uniform(0.5, 2.0) + rng.normal(scale=0.4, size=64) for c in planted])
    labels = discover_cohorts(updates @ updates.T, 3)
    groups = {frozenset(i for i, x in enumerate(labels) if x == k) for k in set(labels)}
    assert groups == {frozenset(i for i, x in enumerate(planted) if x == k) for k in range(3)}
    assert labels[0] == 0  # cohorts numbered by first member
    with pytest.raises(InvalidUpdate):
        discover_cohorts(updates[:2] @ updates[:2].T, 3)


# ---- per-cohort aggregation at the coordinator ----------------------------------------------------------
def _plain(part: tuple[int, bytes]) -> np.ndarray:
    return np.frombuffer(part[1], dtype="<f4")


@dataclass
class Joined:
    """A created levelled job that its members joined, in the coordinator ``jobs``."""

    jobs: JobManager
    job: JobRuntime


def _job(tmp_path: Path, config: JobConfig, members: tuple[str, ...], clock: Clock | None = None) -> Joined:
    store = Store(tmp_path / "levels.sqlite")
    jobs = JobManager(store, clock=clock or Clock())
    job = jobs.job(jobs.create_job(dump_toml(config)))
    for p in members:
        job.join(p, 100, 5, G + E, exchange_key() if config.he.enabled else b"")
    return Joined(jobs, job)


def test_plaintext_levels_aggregate_global_over_all_and_expert_per_cohort(tmp_path: Path) -> None:
    config = levelled(tiny_job(tmp_path, rounds=2, participants_per_round=3, min_participants=3),
                      ("x", ("a", "b")), ("y", ("c",)))
    job = _job(tmp_path, config, ("a", "b", "c")).job
    job.submit("a", levels_update(job.job_id, 0, np.zeros(G), np.zeros(E), 0))
    job.start()
    job.tick()
    with pytest.raises(InvalidUpdate):  # a plain vector is not a level container
        job.submit("a", Payload(job.job_id, 1, encoding(FLOAT32), G + E, encode_vector(np.zeros(G + E)), 10))
    deltas = {"a": (np.full(G, 1.0), np.full(E, 1.0), 10), "b": (np.full(G, 3.0), np.full(E, 3.0), 30),
              "c": (np.full(G, 5.0), np.full(E, -2.0), 10)}
    with pytest.raises(InvalidUpdate):  # a wrong level size is refused, the round is unchanged
        job.submit("a", Payload(job.job_id, 1, encoding(FLOAT32), G + E, pack(
            {"global": (G + 1, encode_vector(np.zeros(G + 1))), "expert": (E - 1, encode_vector(np.zeros(E - 1)))}), 10))
    r = open_round(job)
    assert r is not None and not r.reported
    for p, (g, e, n) in deltas.items():
        job.submit(p, levels_update(job.job_id, 1, g, e, n))
    stored = stored_parts(job, 1)
    assert np.allclose(_plain(stored["global"]), (10 * 1 + 30 * 3 + 10 * 5) / 50)
    assert np.allclose(_plain(stored["expert:x"]), (10 * 1 + 30 * 3) / 40)
    assert np.allclose(_plain(stored["expert:y"]), -2.0)
    assert np.allclose(_plain(stored[f"expert:{DEFAULT_COHORT}"]), 0.0)  # nobody outside a cohort: unchanged
    assert json.loads(stored[COHORTS_PART][1]) == {"a": "x", "b": "x", "c": "y"}
    for member, cohort in (("a", "x"), ("c", "y")):
        view = unpack(job.global_payload(member, 1).data)
        assert list(view) == ["global", "expert"] and view["expert"] == stored[f"expert:{cohort}"]
    with pytest.raises(PreconditionFailed, match="prompt levels"):  # no single prompt for an admin export
        job.global_payload(None, 1)


def test_discovered_cohorts_split_the_expert_level_and_survive_a_restart(tmp_path: Path) -> None:
    config = levelled(tiny_job(tmp_path, rounds=3, participants_per_round=4, min_participants=4),
                      cohorts_from="discover", num_cohorts=2, discover_round=1)
    joined = _job(tmp_path, config, ("a", "b", "c", "d"))
    jobs, job = joined.jobs, joined.job
    assert job.levels is not None
    job.submit("a", levels_update(job.job_id, 0, np.zeros(G), np.zeros(E), 0))
    job.start()
    job.tick()
    up, down = np.array([1.0, 0.1, 0, 0, 0, 1, 0, 0]), np.array([0, 0, 1.0, 0.1, 0, 0, 0, 1])
    for p, d in (("a", up), ("b", 1.1 * up), ("c", down), ("d", 0.9 * down)):
        job.submit(p, levels_update(job.job_id, 1, d[:G], d[G:]))
    assert job.levels.plan.assigned == {"a": "cohort-1", "b": "cohort-1", "c": "cohort-2", "d": "cohort-2"}
    job.tick()
    for p, d in (("a", up), ("b", up), ("c", down), ("d", down)):
        job.submit(p, levels_update(job.job_id, 2, d[:G], d[G:]))
    assert not np.allclose(_plain(unpack(job.global_payload("a", 2).data)["expert"]),
                           _plain(unpack(job.global_payload("c", 2).data)["expert"]))
    restored = restore_job(jobs, job.store.jobs()[0])
    assert restored.levels is not None and restored.levels.plan.assigned == job.levels.plan.assigned


def test_a_poisoned_expert_part_never_becomes_a_version_and_its_sender_is_quarantined(tmp_path: Path) -> None:
    """d's global part is honest, its expert part is under another key relabelled with the job's: cohort y's
    sum decrypts to garbage.  The checkers refuse the whole candidate version; on the retry every update's
    parts are checked alone, masked, and d is quarantined; the round then completes without it."""
    clock = Clock()
    config = dataclasses.replace(levelled(tiny_job(tmp_path, rounds=1, participants_per_round=4, min_participants=3),
                                          ("x", ("a", "b")), ("y", ("c", "d"))), he=HESection(enabled=True, mode="single_key"))
    job = _job(tmp_path, config, ("a", "b", "c", "d"), clock).job
    secret = SecretContext.create(config.he.params())
    job.relay.publish_context("a", secret.public_bytes(), secret.key_id)
    for p in ("b", "c", "d"):
        job.relay.share_key("a", p, b"sealed for " + p.encode())
    job.submit("a", encrypted_levels_update(secret, job.job_id, 0, np.zeros(G), np.zeros(E), 1))
    job.start()
    job.tick()
    foreign = SecretContext.create(config.he.params())

    def poisoned(n: int) -> Payload:
        e = relabelled(foreign.encrypt(np.full(E, 2.0 * n), n), secret.key_id)
        parts = {"global": (G, secret.encrypt(np.full(G, 1.0 * n), n)), "expert": (E, e)}
        return Payload(job.job_id, 1, encoding(ENCODING), G + E, pack(parts), n)

    for attempt in (1, 2, 3):
        r = open_round(job)
        assert r is not None and r.attempt == attempt
        for p in r.selected:
            job.submit(p, poisoned(20) if p == "d" else
                       encrypted_levels_update(secret, job.job_id, 1, np.ones(G), np.ones(E), 10))
        assert answer_checks(job, secret) == (2 if attempt == 2 else 1)
        assert job.latest_version() == (1 if attempt == 3 else 0)
        job.tick()
    assert job.roster.quarantined() == ("d",) and job.state.value == "done"
    total, weight = secret.decrypt(unpack(job.stored_payload(1).data)["global"][1], G)
    assert weight == 30 and np.allclose(total / weight, 1.0, atol=1e-6)


def test_encrypted_expert_level_is_summed_per_cohort_with_real_ciphertexts(tmp_path: Path) -> None:
    clock = Clock()
    config = dataclasses.replace(levelled(tiny_job(tmp_path, rounds=2, participants_per_round=4, min_participants=3),
                                          ("x", ("a", "b")), ("y", ("c", "d"))), he=HESection(enabled=True, mode="single_key"))
    job = _job(tmp_path, config, ("a", "b", "c", "d"), clock).job
    secret = SecretContext.create(config.he.params())  # every key holder has this key; the coordinator never does
    job.relay.publish_context("a", secret.public_bytes(), secret.key_id)
    for p in ("b", "c", "d"):
        job.relay.share_key("a", p, b"sealed for " + p.encode())

    def upload(round_: int, g: np.ndarray, e: np.ndarray, n: int) -> Payload:
        return encrypted_levels_update(secret, job.job_id, round_, g, e, n)

    job.submit("a", upload(0, np.zeros(G), np.zeros(E), 1))
    job.start()
    job.tick()
    deltas = {"a": (np.full(G, 1.0), np.full(E, 1.0), 10), "b": (np.full(G, 3.0), np.full(E, 3.0), 30),
              "c": (np.full(G, 5.0), np.full(E, -2.0), 10), "d": (np.full(G, 7.0), np.full(E, 4.0), 20)}
    for p, (g, e, n) in deltas.items():
        job.submit(p, upload(1, g, e, n))
    assert answer_checks(job, secret) == 1
    stored = stored_parts(job, 1)
    assert set(stored) == {"global", "expert:x", "expert:y"}

    def mean(part: tuple[int, bytes]) -> np.ndarray:
        total, weight = secret.decrypt(part[1], part[0])
        return total / weight

    assert np.allclose(mean(stored["global"]), (10 + 90 + 50 + 140) / 70, atol=1e-4)
    assert np.allclose(mean(stored["expert:x"]), 100 / 40, atol=1e-4)
    assert np.allclose(mean(stored["expert:y"]), (-20 + 80) / 30, atol=1e-4)
    assert unpack(job.global_payload("c", 1).data)["expert"] == stored["expert:y"]
    # round 2: only c of cohort y reports; its lone expert sum is withheld, the cohort keeps its prompt
    job.tick()
    for p in ("a", "b", "c"):
        g, e, n = deltas[p]
        job.submit(p, upload(2, g, e, n))
    r = open_round(job)
    assert r is not None
    clock.now = r.deadline + 1
    job.tick()
    assert answer_checks(job, secret) == 1
    stored = stored_parts(job, 2)
    assert set(stored) == {"global", "expert:x"}
    assert unpack(job.global_payload("c", 2).data)["expert"] == (E, b"")  # "unchanged"
    assert job.view().rounds[-1].metrics["expert_cohorts_withheld"] == 1.0
