"""A member that poisons an encrypted job, against a real coordinator over gRPC with real ciphertexts.

The poisoner holds the job key like everyone else, but encrypts its update under a fresh key with the same
parameters and writes the job's key id into the header: the coordinator cannot tell, and the folded sum
decrypts to garbage for every key holder.  Required (issue 28, point 3): that aggregate never becomes a
global version, the round is retried, and the culprit is found without any key holder seeing an individual
update unmasked, then excluded and flagged like a robust rejection.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from fedprompt.app.admin_client import AdminClient
from fedprompt.config import HESection, dump_toml
from fedprompt.coordinator.jobs import JobManager
from fedprompt.coordinator.runtime import JobRuntime
from fedprompt.coordinator.store import MemberState, Store
from fedprompt.crypto.audit import Verdict, check, mask_bound
from fedprompt.crypto.ckks import ENCODING, SecretContext
from fedprompt.participant.grpc_link import GrpcLink
from fedprompt.participant.keys import KeyHolder
from fedprompt.protocol import Payload
from fedprompt.wire.bundle import unpack_bundle
from tests.fakes import answer_checks, check_over_links, encrypted_initial, encrypted_update, exchange_key, relabelled
from tests.support import LiveCoordinator, tiny_job, wait_for

SIZE = 5000  # two ciphertexts: a poisoner may spoil either
HE = HESection(enabled=True, mode="single_key")
WEIGHTS = {"a": 7, "b": 11, "c": 5, "m": 9}


def delta(name: str) -> np.ndarray:
    return np.random.default_rng(ord(name)).normal(0, 0.05, SIZE)


def poisoned(job_key: SecretContext, n: int) -> bytes:
    """``m``'s update under a fresh key with the job's parameters, relabelled with the job's key id."""
    return relabelled(SecretContext.create(HE.params()).encrypt(delta("m") * n, n), job_key.key_id)


def test_a_poisoned_ciphertext_never_becomes_a_version_and_its_sender_is_found_and_quarantined(
        tmp_path: Path) -> None:
    config = dataclasses.replace(tiny_job(tmp_path, rounds=1, participants_per_round=4, min_participants=3,
                                          round_deadline_s=120.0), he=HE)
    with LiveCoordinator(tmp_path / "coord") as coordinator:
        admin = AdminClient(coordinator.target)
        job_id = admin.create_job(dump_toml(config))
        links = {n: GrpcLink(coordinator.target, n, give_up_after_s=5) for n in WEIGHTS}
        holders = {n: KeyHolder(link, HE.params(), job_id) for n, link in links.items()}
        try:
            for name, link in links.items():
                holders[name].joined(name, link.join(job_id, 30, 4, SIZE, holders[name].public_key).deal_keys)
            holders["a"].refresh()
            for name in ("b", "c", "m"):
                holders[name].refresh()
            secrets = {name: holder.require() for name, holder in holders.items()}
            key = secrets["a"]
            links["a"].upload(Payload(job_id, 0, ENCODING, SIZE, key.encrypt(np.zeros(SIZE), 1)))
            admin.start(job_id)
            job: JobRuntime = coordinator.call(lambda: coordinator.server.jobs.job(job_id))

            def attempt(number: int) -> tuple[str, ...]:
                wait_for(lambda: coordinator.call(lambda: job.open is not None and job.open.attempt == number), 10,
                         what=f"attempt {number}")
                selected: tuple[str, ...] = coordinator.call(lambda: job.open.selected)  # type: ignore[union-attr]
                for name in selected:
                    n = WEIGHTS[name]
                    data = poisoned(key, n) if name == "m" else key.encrypt(delta(name) * n, n)
                    links[name].upload(Payload(job_id, 1, ENCODING, SIZE, data, num_examples=n))
                return selected

            # attempt 1: the sum is garbage; its two checkers refuse it, nothing is stored, and the job starts
            # keeping each update of later attempts
            assert attempt(1) == ("a", "b", "c", "m")
            assert len(check_over_links(links, secrets, job_id, 1, SIZE)) == 2
            wait_for(lambda: coordinator.call(lambda: job.open is None or job.open.attempt == 2), 10, what="retry")
            assert coordinator.call(job.latest_version) == 0 and coordinator.call(lambda: job.accumulator.audit)

            # attempt 2: refused again, then every update checked alone, masked: m's fails
            assert attempt(2) == ("a", "b", "c", "m")
            assert len(check_over_links(links, secrets, job_id, 1, SIZE)) == 2  # the aggregate
            audit = coordinator.call(lambda: job.open.check)  # type: ignore[union-attr]
            parts = unpack_bundle(audit.bundle)
            assert [masked for masked, _ in parts] == [True] * 4 and audit.owners == ("a", "b", "c", "m")
            seen = secrets["a"].decrypt_reals(parts[0][1], SIZE)[:SIZE]  # what a checker sees of a's update
            assert np.abs(seen - delta("a") * WEIGHTS["a"]).mean() > mask_bound(HE.params()) / 4
            assert len(check_over_links(links, secrets, job_id, 1, SIZE)) == 2  # the masked updates
            wait_for(lambda: coordinator.call(lambda: job.open is None or job.open.attempt == 3), 10, what="retry")
            assert coordinator.call(job.latest_version) == 0
            assert coordinator.call(lambda: job.roster.members["m"].state) is MemberState.QUARANTINED
            flags = admin.flags(job_id)
            assert {(f.participant_id, f.accepted, f.defence) for f in flags.flags} == {
                ("a", True, "he_check"), ("b", True, "he_check"), ("c", True, "he_check"),
                ("m", False, "he_check")}
            assert flags.quarantined == ("m",)

            # attempt 3, without m: checked, stored, and it is the honest members' weighted average
            assert attempt(3) == ("a", "b", "c")
            assert len(check_over_links(links, secrets, job_id, 1, SIZE)) == 2
            wait_for(lambda: coordinator.call(job.latest_version) == 1, 10, what="version 1")
            total, weight = key.decrypt(links["a"].download(job_id, 1).data, SIZE)
            honest = {n: w for n, w in WEIGHTS.items() if n != "m"}
            assert weight == sum(honest.values())
            expected = sum(delta(n) * w for n, w in honest.items()) / weight
            assert np.abs(total / weight - expected).max() < 1e-6
            rows = [(r.attempt, r.state, r.summary.get("invalid_aggregate"), r.summary.get("excluded"))
                    for r in coordinator.call(lambda: job.store.rounds(job_id))]
            assert rows == [(1, "failed", 1.0, None), (2, "failed", None, 1.0), (3, "done", None, None)]
            assert coordinator.call(lambda: job.state.value) == "done"  # the culprit's attempt did not count
        finally:
            for link in links.values():
                link.close()
            admin.close()


def _in_process_job(tmp_path: Path) -> tuple[JobRuntime, SecretContext]:
    """An encrypted job on a real SQLite file, round 1 open for a, b, c and m, every one a key holder."""
    jobs = JobManager(Store(tmp_path / "state.sqlite"))
    config = dataclasses.replace(tiny_job(tmp_path, rounds=1, participants_per_round=4, min_participants=3), he=HE)
    job = jobs.job(jobs.create_job(dump_toml(config)))
    for name in WEIGHTS:
        job.join(name, 30, 4, SIZE, exchange_key())
    secret = SecretContext.create(HE.params())
    job.relay.publish_context("a", secret.public_bytes(), secret.key_id)
    for name in ("b", "c", "m"):
        job.relay.share_key("a", name, b"sealed for " + name.encode())
    job.submit("a", encrypted_initial(secret, job.job_id, SIZE))
    job.start()
    job.tick()
    return job, secret


def test_a_member_that_declares_one_weight_and_encrypts_another_is_found(tmp_path: Path) -> None:
    """Weight inflation: a valid ciphertext whose weight slot (90) is not the count its header declares (9)
    would pull the average towards it; the aggregate's weight gives it away, and on the next attempt the masked
    audit names the member."""
    job, secret = _in_process_job(tmp_path)
    for attempt in (1, 2):
        assert job.open is not None and job.open.attempt == attempt
        for name, n in WEIGHTS.items():
            inflated = 10 * n if name == "m" else n
            job.submit(name, Payload(job.job_id, 1, ENCODING, SIZE, secret.encrypt(delta(name) * n, inflated), n))
        assert answer_checks(job, secret) == attempt  # the aggregate; on the second attempt each update too
        assert job.latest_version() == 0
        job.tick()
    assert job.roster.quarantined() == ("m",)
    assert [d.participant_id for d in job.store.decisions(job.job_id) if not d.accepted] == ["m"]


def test_checkers_that_disagree_decide_nothing(tmp_path: Path) -> None:
    """A lying (or broken) checker is caught by the other: the attempt fails closed, no version, no culprit."""
    job, secret = _in_process_job(tmp_path)
    for name, n in WEIGHTS.items():
        job.submit(name, encrypted_update(secret, job.job_id, 1, delta(name), n))
    r = job.open
    assert r is not None and r.check is not None
    honest, liar = r.check.checkers
    verdict = check(secret, unpack_bundle(job.check_bundle(honest, 1).data)[0][1], SIZE, masked=False)
    assert verdict == Verdict(True, float(sum(WEIGHTS.values())))
    job.report_check(honest, 1, [verdict])
    job.report_check(liar, 1, [Verdict(False, 0.0)])
    assert job.open is None and job.latest_version() == 0 and job.store.decisions(job.job_id) == []
    assert [(r.state, r.summary.get("failures")) for r in job.store.rounds(job.job_id)] == [("failed", 1.0)]
