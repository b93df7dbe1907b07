"""An encrypted job survives a coordinator restart: its key relay (public context, exchange keys, sealed keys
and, for a Gram defence, evaluation keys) is reloaded from the SQLite file, so the restarted round opens and
aggregates without any member dealing or uploading keys again, and a restored relay is checked as on upload."""

from __future__ import annotations

import dataclasses
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from fedprompt.config import HESection, JobConfig, RobustSection, dump_toml
from fedprompt.coordinator.jobs import JobManager
from fedprompt.coordinator.recovery import resume_jobs
from fedprompt.coordinator.runtime import JobRuntime
from fedprompt.coordinator.store import Store
from fedprompt.crypto.attest import KeyCredentials, KeyTrust, digest
from fedprompt.crypto.ckks import ENCODING, SecretContext
from fedprompt.crypto.errors import AttestationError
from fedprompt.crypto.gram import EVALUATION_KEYS, decrypt_gram, evaluation_keys
from fedprompt.crypto.pki import CertificateAuthority
from fedprompt.errors import DuplicateUpdate
from fedprompt.protocol import Payload, TaskKind
from tests.fakes import SIZE, Clock, answer_checks, encrypted_initial, encrypted_update, exchange_key
from tests.support import open_round, tiny_job

DELTAS = {"a": (np.array([0.1, 0.2, 0.0, -0.1, 0.05, 0.0]), 10),
          "b": (np.array([0.12, 0.18, 0.01, -0.08, 0.04, 0.01]), 20),
          "c": (np.array([0.09, 0.21, -0.01, -0.11, 0.06, 0.02]), 30)}


@dataclass
class Dealt:
    """A running encrypted job and the key its dealer made (every key holder has it; the coordinator never)."""

    job: JobRuntime
    secret: SecretContext


def encrypted_job(tmp_path: Path, config: JobConfig, clock: Clock) -> Dealt:
    """A running encrypted job: a dealt the keys, b and c got theirs sealed, version 0 is in, round 1 is open."""
    jobs = JobManager(Store(tmp_path / "state.sqlite"), clock=clock, offline_after_s=60.0)
    job = jobs.job(jobs.create_job(dump_toml(config)))
    job.join("a", 40, 5, SIZE, exchange_key())
    secret = SecretContext.create(config.he_params(job.aggregator.gram))
    job.relay.publish_context("a", secret.public_bytes(), secret.key_id)
    if job.aggregator.gram:
        job.submit("a", Payload(job.job_id, 0, EVALUATION_KEYS, 0, evaluation_keys(secret)))
    for name in ("b", "c"):
        job.join(name, 40, 5, SIZE, exchange_key())
        job.relay.share_key("a", name, b"sealed for " + name.encode())  # blobs the coordinator cannot open
    job.submit("a", encrypted_initial(secret, job.job_id))
    job.start()
    job.tick()
    assert job.open is not None and job.open.number == 1
    return Dealt(job, secret)


def restarted(tmp_path: Path, clock: Clock, job_id: str) -> JobRuntime:
    jobs = JobManager(Store(tmp_path / "state.sqlite"), clock=clock, offline_after_s=60.0)
    resume_jobs(jobs)
    return jobs.job(job_id)


def submit(job: JobRuntime, secret: SecretContext, name: str, weight_slot: bool = True) -> None:
    delta, n = DELTAS[name]
    job.submit(name, encrypted_update(secret, job.job_id, 1, delta, n, weight_slot))


def test_encrypted_fedavg_job_resumes_with_its_key_relay(tmp_path: Path) -> None:
    clock = Clock()
    config = dataclasses.replace(tiny_job(tmp_path, rounds=1, participants_per_round=3, min_participants=3,
                                          round_deadline_s=30.0), he=HESection(enabled=True, mode="single_key"))
    dealt = encrypted_job(tmp_path, config, clock)
    before, secret = dealt.job, dealt.secret
    submit(before, secret, "a")  # in flight at the crash: lost with the process, resubmitted below
    job = restarted(tmp_path, clock, before.job_id)
    keys = job.keys
    assert keys is not None and keys.context is not None and keys.dealer == "a"
    assert keys.context.key_id == secret.key_id and keys.exchange == before.keys.exchange  # type: ignore[union-attr]
    assert all(keys.holds(p) for p in "abc") and keys.ready()
    assert job.relay.key_state("b").sealed_key == b"sealed for b" and not job.relay.key_state("a").needs_key
    with pytest.raises(DuplicateUpdate):  # the dealer cannot publish a second context over the restored one
        job.relay.publish_context("a", secret.public_bytes(), secret.key_id)
    assert job.open is not None and (job.open.number, job.open.attempt) == (1, 2)
    assert job.open.selected == ("a", "b", "c") and job.next_task("b").kind is not TaskKind.WAIT
    for name in DELTAS:
        submit(job, secret, name)
    assert job.latest_version() == 0 and answer_checks(job, secret) == 1  # two key holders check it first
    assert open_round(job) is None and job.state.value == "done"
    prompt = job.store.prompt(job.job_id, 1)
    assert prompt is not None
    encoding, data = prompt
    assert encoding == ENCODING
    summed, weight = secret.decrypt(data, SIZE)
    assert weight == 60.0 and np.allclose(summed, sum(d * n for d, n in DELTAS.values()), atol=1e-4)


def test_gram_defence_job_resumes_with_its_evaluation_keys(tmp_path: Path) -> None:
    clock = Clock()
    config = dataclasses.replace(
        tiny_job(tmp_path, rounds=1, participants_per_round=3, min_participants=3, round_deadline_s=30.0,
                 aggregator="norm_bound"), he=HESection(enabled=True, mode="single_key"), robust=RobustSection(max_malicious=1))
    dealt = encrypted_job(tmp_path, config, clock)
    before, secret = dealt.job, dealt.secret
    job = restarted(tmp_path, clock, before.job_id)
    assert job.keys is not None and job.keys.evaluator is not None and job.keys.ready()
    with pytest.raises(DuplicateUpdate):
        job.submit("a", Payload(job.job_id, 0, EVALUATION_KEYS, 0, evaluation_keys(secret)))
    assert job.open is not None and job.open.gram is not None
    for name in DELTAS:
        submit(job, secret, name, weight_slot=False)
    assert job.open.gram.started  # the restored evaluation keys computed the encrypted Gram matrix
    scalars = decrypt_gram(secret, job.gram_payload(job.open.gram.decryptors[0], 1).data, len(DELTAS))
    assert np.isfinite(scalars).all()


def test_a_tampered_stored_context_pauses_its_job_and_nothing_is_added_under_it(tmp_path: Path) -> None:
    """What the store hands back is parsed and checked again: a context that now carries a secret key pauses
    that job with the reason (the coordinator starts, other jobs go on), and no round opens under it."""
    clock = Clock()
    config = dataclasses.replace(tiny_job(tmp_path, rounds=1, participants_per_round=3, min_participants=3),
                                 he=HESection(enabled=True, mode="single_key"))
    dealt = encrypted_job(tmp_path, config, clock)
    before, secret = dealt.job, dealt.secret
    with sqlite3.connect(tmp_path / "state.sqlite") as db:
        db.execute("UPDATE he_contexts SET public_context=? WHERE job_id=?", (secret.secret_bytes(), before.job_id))
    with capture_logs() as logs:
        job = restarted(tmp_path, clock, before.job_id)
    assert job.state.value == "paused" and "key relay not restored" in job.lifecycle.reason and "secret key" in job.lifecycle.reason
    assert any(e["event"] == "key relay not restored" and e["log_level"] == "error" for e in logs)
    assert job.keys is not None and job.keys.context is None and job.open is None
    assert [(r.state, r.reason) for r in job.store.jobs() if r.job_id == job.job_id] == [("paused", job.lifecycle.reason)]


def test_key_attestations_are_relayed_as_signed_after_a_restart(tmp_path: Path) -> None:
    """Members keep verifying keys after a coordinator restart: every statement is reloaded byte for byte, and
    one that no longer verifies (here: for another job) would be refused by them, not by a blind relay."""
    ca = CertificateAuthority.init(tmp_path / "ca")
    creds = {n: KeyCredentials.from_files(ca.ca_cert_path, *reversed(ca.issue(n, tmp_path / "sites")))
             for n in ("participant:a", "participant:b")}
    config = dataclasses.replace(tiny_job(tmp_path, rounds=1), he=HESection(enabled=True, mode="single_key"))
    jobs = JobManager(Store(tmp_path / "state.sqlite"), clock=Clock(), offline_after_s=60.0)
    job = jobs.job(jobs.create_job(dump_toml(config)))
    keys = {n: exchange_key() for n in creds}
    for name, cred in creds.items():
        job.join(name, 40, 5, SIZE, keys[name], cred.signer.sign(job.job_id, "exchange", (digest(keys[name]),)))
    secret = SecretContext.create(config.he_params(False))
    dealt = creds["participant:a"].signer.sign(job.job_id, "dealer", (secret.key_id, digest(secret.public_bytes())))
    job.relay.publish_context("participant:a", secret.public_bytes(), secret.key_id, dealt)
    before = job.relay.key_state("participant:a"), job.relay.key_state("participant:b")
    job = restarted(tmp_path, Clock(), job.job_id)
    after = job.relay.key_state("participant:a"), job.relay.key_state("participant:b")
    assert after == before and after[0].needs_key[0][2] and after[1].dealer_attestation == dealt
    trust = KeyTrust(ca.cert)
    trust.verify(after[0].needs_key[0][2], job_id=job.job_id, identity="participant:b", purpose="exchange",
                 digests=(digest(keys["participant:b"]),))


def test_the_relay_refuses_a_statement_about_another_key_or_caller(tmp_path: Path) -> None:
    """The coordinator cannot judge a certificate for the members, but refuses a statement that is not about the
    key, job and caller it came with, so an honest member's mistake is named at upload, not by its peers."""
    ca = CertificateAuthority.init(tmp_path / "ca")
    signer = KeyCredentials.from_files(ca.ca_cert_path, *reversed(ca.issue("participant:a", tmp_path))).signer
    jobs = JobManager(Store(tmp_path / "state.sqlite"), clock=Clock(), offline_after_s=60.0)
    job = jobs.job(jobs.create_job(dump_toml(dataclasses.replace(tiny_job(tmp_path), he=HESection(enabled=True, mode="single_key")))))
    key = exchange_key()
    with pytest.raises(AttestationError, match="not the key it signed"):
        job.join("participant:a", 40, 5, SIZE, key, signer.sign(job.job_id, "exchange", (digest(exchange_key()),)))
    with pytest.raises(AttestationError, match="is attested by 'participant:a'"):
        job.join("participant:b", 40, 5, SIZE, key, signer.sign(job.job_id, "exchange", (digest(key),)))
    with pytest.raises(AttestationError, match="signed for another job"):
        job.join("participant:a", 40, 5, SIZE, key, signer.sign("job-other", "exchange", (digest(key),)))
    assert job.keys is not None and job.keys.exchange == {}
