"""The public weight unit of threshold jobs (``he.weight_unit``): the threshold parameters hold summands of at most
8192 / n, so a site weighs its update in units of ``he.weight_unit`` examples; the coordinator declares the same
weights, the members' check of the decrypted weight slot agrees, and the FedAvg mean is unchanged.  A count beyond
the bound is capped, with a warning naming the key.  Real SEAL ciphertexts, a real SQLite file, no network."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from fedprompt.config import DPSection, HESection, JobConfig, dump_toml
from fedprompt.coordinator.jobs import JobManager
from fedprompt.coordinator.runtime import JobRuntime
from fedprompt.coordinator.store import Store
from fedprompt.crypto.sealing import new_exchange_key, public_bytes
from fedprompt.participant.codec import ThresholdPart
from fedprompt.participant.threshold_keys import ThresholdKeys
from fedprompt.protocol import Payload
from fedprompt.wire.threshold import ENCODING
from tests.fakes import SIZE, Clock, ThresholdDoor
from tests.support import tiny_job

MEMBERS = ("a", "b", "c")
DELTAS = {"a": np.array([0.1, 0.2, 0.0, -0.1, 0.05, 0.0]), "b": np.array([0.12, 0.18, 0.01, -0.08, 0.04, 0.01]),
          "c": np.array([0.09, 0.21, -0.01, -0.11, 0.06, 0.02])}
#: The per-summand bound of the threshold parameters for three members: 2^13 / 3.
BOUND = 8192 / 3


def _config(tmp_path: Path, **he: object) -> JobConfig:
    base = tiny_job(tmp_path, rounds=1, participants_per_round=3, min_participants=3, round_deadline_s=30.0,
                    allowed_participants=MEMBERS)
    return dataclasses.replace(base, he=HESection(**{"enabled": True, "mode": "threshold", **he}))  # type: ignore[arg-type]


def test_threshold_jobs_weigh_in_units_single_key_jobs_and_participant_level_dp_as_before(tmp_path: Path) -> None:
    threshold = _config(tmp_path)
    assert threshold.he.weight_unit == 100
    assert threshold.summand_weight(4231) == pytest.approx(42.31)
    assert _config(tmp_path, weight_unit=10).summand_weight(4231) == pytest.approx(423.1)
    single = _config(tmp_path, mode="single_key")
    assert single.summand_weight(4231) == 4231 and single.summand_weight(4231, cap=False) == 4231
    dp = DPSection(enabled=True, noise_multiplier=1.0, participant_noise_multiplier=1.0)
    assert dataclasses.replace(threshold, dp=dp).summand_weight(1) == 1  # each update counts once: not divided
    assert threshold.summand_weight(500_000) == pytest.approx(BOUND)
    assert threshold.summand_weight(500_000, cap=False) == pytest.approx(5000)


def _federation(tmp_path: Path, config: JobConfig, train: int) -> tuple[JobRuntime, dict[str, ThresholdKeys]]:
    """A threshold job whose three members (``train`` examples each) finished key setup; version 0 stored."""
    jobs = JobManager(Store(tmp_path / "state.sqlite"), clock=Clock(), offline_after_s=60.0)
    job = jobs.job(jobs.create_job(dump_toml(config)))
    params = config.he.threshold_params(len(MEMBERS))
    keys = {}
    for who in MEMBERS:
        exchange = new_exchange_key()
        job.join(who, train, 5, SIZE, public_bytes(exchange))
        keys[who] = ThresholdKeys(job.job_id, MEMBERS, who, params, exchange, tmp_path / who)
    for _ in range(3):
        for who in MEMBERS:
            keys[who].refresh(ThresholdDoor(job, who))
    initial = ThresholdPart(lambda: keys["a"], config.summand_weight).encode(0, np.zeros(SIZE), 1)
    job.submit("a", Payload(job.job_id, 0, ENCODING, SIZE, initial))
    job.start()
    job.tick()
    return job, keys


def _round(job: JobRuntime, keys: dict[str, ThresholdKeys], counts: dict[str, int]) -> tuple[np.ndarray, float]:
    """One round: each member uploads its delta with its example count (the payload's plain integer); the
    decryptors answer; member a opens the stored version."""
    assert job.open is not None
    for who, n in counts.items():
        data = ThresholdPart(functools.partial(keys.__getitem__, who), job.config.summand_weight).encode(
            1, DELTAS[who], n, job.open.attempt)
        job.submit(who, Payload(job.job_id, 1, ENCODING, SIZE, data, num_examples=n))
    decryption = job.rounds.decryption(1)
    for who in decryption.decryptors:
        job.relay.submit_share(who, 1, decryption.attempt, keys[who].decryption_share(
            SIZE, 1, decryption.attempt, decryption.uploaders, decryption.decryptors))
    assert job.state.value == "done"
    stored = job.store.prompt(job.job_id, 1)
    assert stored is not None
    return keys["a"].open_version(stored[1], SIZE)


def test_demo_sized_sites_fit_and_the_fedavg_mean_is_unchanged(tmp_path: Path) -> None:
    """4,231 examples each weigh 42.31 units: under the 2,730 a summand may hold at n = 3 (4,231 did not)."""
    counts = {"a": 4231, "b": 4187, "c": 3950}
    config = _config(tmp_path)
    job, keys = _federation(tmp_path, config, 5000)
    total, weight = _round(job, keys, counts)
    assert weight == pytest.approx(sum(counts.values()) / 100, abs=1e-4)
    fedavg = sum(DELTAS[w] * n for w, n in counts.items()) / sum(counts.values())
    assert np.abs(total / weight - fedavg).max() <= 1e-5


def test_a_count_beyond_the_bound_is_capped_with_a_warning_naming_the_unit(tmp_path: Path) -> None:
    """With ``weight_unit`` 1, a's 3,000 examples exceed the 2,730 a summand may hold: a encrypts the bound and
    warns; the coordinator declares the same capped weight, so the members' weight check passes."""
    counts = {"a": 3000, "b": 20, "c": 30}
    config = _config(tmp_path, weight_unit=1)
    job, keys = _federation(tmp_path, config, 5000)
    with capture_logs() as logs:
        total, weight = _round(job, keys, counts)
    capped = [e for e in logs if e["log_level"] == "warning" and "he.weight_unit" in e["event"]]
    assert len(capped) == 1 and capped[0]["examples"] == 3000 and capped[0]["capped_to"] == pytest.approx(BOUND)
    assert weight == pytest.approx(BOUND + 50, abs=1e-4)
    expected = (DELTAS["a"] * BOUND + DELTAS["b"] * 20 + DELTAS["c"] * 30) / (BOUND + 50)
    assert np.abs(total / weight - expected).max() <= 1e-6
