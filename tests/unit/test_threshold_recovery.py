"""A threshold-CKKS job survives a coordinator restart: its relay (exchange keys, attested public key shares and
sealed dealings) is reloaded from the store and checked again, the collective key is the members' own, the
interrupted round reopens as a new attempt with fresh uploads, and its members decrypt and combine it.
Real SEAL ciphertexts, a real SQLite file, no network."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from fedprompt.config import HESection, dump_toml
from fedprompt.coordinator.jobs import JobManager
from fedprompt.coordinator.recovery import resume_jobs
from fedprompt.coordinator.rounds import RoundState
from fedprompt.coordinator.runtime import JobRuntime
from fedprompt.coordinator.store import Store
from fedprompt.coordinator.threshold import ThresholdKeyRelay
from fedprompt.crypto.sealing import new_exchange_key, public_bytes
from fedprompt.errors import DuplicateUpdate
from fedprompt.participant.codec import ThresholdPart
from fedprompt.participant.threshold_keys import ThresholdKeys
from fedprompt.protocol import Payload
from fedprompt.wire.threshold import ENCODING
from tests.fakes import SIZE, Clock, ThresholdDoor
from tests.support import tiny_job

MEMBERS = ("a", "b", "c")
DELTAS = {"a": (np.array([0.1, 0.2, 0.0, -0.1, 0.05, 0.0]), 10),
          "b": (np.array([0.12, 0.18, 0.01, -0.08, 0.04, 0.01]), 20),
          "c": (np.array([0.09, 0.21, -0.01, -0.11, 0.06, 0.02]), 30)}


def _upload(job: JobRuntime, keys: ThresholdKeys, round_: int, attempt: int) -> None:
    delta, n = DELTAS[keys.identity]
    data = ThresholdPart(lambda: keys, job.config.summand_weight).encode(round_, delta, n, attempt)
    job.submit(keys.identity, Payload(job.job_id, round_, ENCODING, SIZE, data, num_examples=n))


def test_a_threshold_job_resumes_with_its_relay_and_completes_the_interrupted_round(tmp_path: Path) -> None:
    clock = Clock()
    config = tiny_job(tmp_path, rounds=1, participants_per_round=3, min_participants=3, round_deadline_s=30.0,
                      allowed_participants=MEMBERS)
    config = dataclasses.replace(config, he=HESection(enabled=True, mode="threshold"))
    jobs = JobManager(Store(tmp_path / "state.sqlite"), clock=clock, offline_after_s=60.0)
    job = jobs.job(jobs.create_job(dump_toml(config)))
    params = config.he.threshold_params(len(MEMBERS))
    keys = {}
    for who in MEMBERS:
        exchange = new_exchange_key()
        job.join(who, 40, 5, SIZE, public_bytes(exchange))
        keys[who] = ThresholdKeys(job.job_id, MEMBERS, who, params, exchange, tmp_path / who)
    for _ in range(3):
        for who in MEMBERS:
            keys[who].refresh(ThresholdDoor(job, who))
    assert all(k.ready for k in keys.values())
    job.submit("a", Payload(job.job_id, 0, ENCODING, SIZE, ThresholdPart(lambda: keys["a"], job.config.summand_weight).encode(0, np.zeros(SIZE), 1)))
    job.start()
    job.tick()
    assert job.open is not None and (job.open.number, job.open.attempt) == (1, 1)
    _upload(job, keys["a"], 1, 1)  # in flight at the crash: lost with the process

    restarted = JobManager(Store(tmp_path / "state.sqlite"), clock=clock, offline_after_s=60.0)
    resume_jobs(restarted)
    job = restarted.job(job.job_id)
    relay = job.keys
    assert isinstance(relay, ThresholdKeyRelay) and relay.ready()
    assert relay.relay.context.key_id == keys["a"].context.key_id
    for who in MEMBERS:  # the relay answers as before the restart: nothing is dealt or published again
        state = job.relay.threshold_keys(who)
        assert state.dealt_by_caller and len(state.shares) == 3 and len(state.dealt) == 2
        assert keys[who].refresh(ThresholdDoor(job, who))
    with pytest.raises(DuplicateUpdate):
        job.relay.publish_share("a", keys["a"].public, b"")
    job.tick()
    assert job.open is not None and (job.open.number, job.open.attempt) == (1, 2)
    for who in MEMBERS:
        _upload(job, keys[who], 1, 2)
    assert job.open is not None and job.open.state is RoundState.DECRYPTING
    decryption = job.rounds.decryption(1)
    for who in decryption.decryptors:
        request = job.relay.decryption(who, 1)
        assert request.encoding == ENCODING
        job.relay.submit_share(who, 1, 2, keys[who].decryption_share(SIZE, 1, 2, decryption.uploaders, decryption.decryptors))
    assert job.state.value == "done"
    stored = job.store.prompt(job.job_id, 1)
    assert stored is not None and stored[0] == ENCODING
    unit = config.he.weight_unit  # 100 examples per unit of weight: the 60 examples weigh 0.6
    expected = sum(d * n / unit for d, n in DELTAS.values())
    for who in MEMBERS:
        total, weight = keys[who].open_version(stored[1], SIZE)
        assert weight == pytest.approx(60 / unit, abs=1e-4) and np.abs(total - expected).max() <= 1e-4
        assert np.abs(total / weight - sum(d * n for d, n in DELTAS.values()) / 60).max() <= 1e-3  # the same mean
