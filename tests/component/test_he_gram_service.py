"""An encrypted Gram defence over real gRPC: evaluation keys uploaded in chunks, DECRYPT tasks, GetGram and
ReportGram, a scaled update rejected, and the aggregate holding only the accepted updates."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from fedprompt.app.admin_client import AdminClient
from fedprompt.config import HESection, RobustSection, dump_toml
from fedprompt.crypto.ckks import ENCODING
from fedprompt.crypto.gram import decrypt_gram
from fedprompt.errors import PermissionDenied
from fedprompt.participant.grpc_link import GrpcLink
from fedprompt.participant.keys import KeyHolder
from fedprompt.protocol import Payload, TaskKind
from tests.fakes import check_over_links
from tests.support import LiveCoordinator, tiny_job, wait_for

SIZE = 300
WEIGHTS = {"a": 7, "b": 11, "c": 5}


def delta(name: str) -> np.ndarray:
    scale = 20.0 if name == "c" else 1.0  # c boosts its update (model replacement)
    return np.random.default_rng(ord(name)).normal(0, 0.05, SIZE) * scale


def test_encrypted_norm_bound_over_grpc(tmp_path: Path) -> None:
    config = dataclasses.replace(
        tiny_job(tmp_path, rounds=1, participants_per_round=3, min_participants=3, aggregator="norm_bound"),
        he=HESection(enabled=True, mode="single_key"), robust=RobustSection(max_malicious=1))
    with LiveCoordinator(tmp_path / "coord") as coordinator:
        admin = AdminClient(coordinator.target)
        job_id = admin.create_job(dump_toml(config))
        links = {n: GrpcLink(coordinator.target, n, give_up_after_s=5) for n in WEIGHTS}
        holders = {n: KeyHolder(link, config.he_params(gram_defence=True), job_id) for n, link in links.items()}
        try:
            for name, link in links.items():
                info = link.join(job_id, 30, 4, SIZE, holders[name].public_key)
                holders[name].joined(name, info.deal_keys)  # the dealer also uploads evaluation keys
            holders["a"].refresh()
            for name in ("b", "c"):
                holders[name].refresh()
            secret = holders["a"].require()
            links["a"].upload(Payload(job_id, 0, ENCODING, SIZE, secret.encrypt(np.zeros(SIZE), 1)))
            admin.start(job_id)
            job = coordinator.call(lambda: coordinator.server.jobs.job(job_id))
            wait_for(lambda: coordinator.call(lambda: job.open), 10, what="round 1")
            for name, n in WEIGHTS.items():
                links[name].upload(Payload(job_id, 1, ENCODING, SIZE, secret.encrypt(delta(name) * n, 0), n))
            wait_for(lambda: coordinator.call(lambda: job.open.gram.computed), 10,  # on the server's worker thread
                     what="encrypted Gram matrix computed")
            tasks = {name: link.get_task(job_id, 0) for name, link in links.items()}
            decryptors = [name for name, task in tasks.items() if task.kind is TaskKind.DECRYPT]
            assert len(decryptors) == 2 and all(tasks[d].round == 1 for d in decryptors)
            outsider = next(n for n in WEIGHTS if n not in decryptors)
            with pytest.raises(PermissionDenied):
                links[outsider].gram(job_id, 1)
            for name in decryptors:
                payload = links[name].gram(job_id, 1)
                assert payload.vector_size == 3
                links[name].report_gram(job_id, 1, decrypt_gram(holders[name].require(), payload.data, 3).tolist())
            secrets = {name: holder.require() for name, holder in holders.items()}
            assert len(check_over_links(links, secrets, job_id, 1, SIZE)) == 2  # the accepted sum, before storing
            wait_for(lambda: coordinator.call(lambda: job.latest_version()) == 1, 10, what="round 1 aggregated")
            flags = admin.flags(job_id)
            assert {f.participant_id for f in flags.flags if not f.accepted} == {"c"}
            total, weight = secret.decrypt(links["a"].download(job_id, 1).data, SIZE)
            assert weight == WEIGHTS["a"] + WEIGHTS["b"]
            expected = (delta("a") * WEIGHTS["a"] + delta("b") * WEIGHTS["b"]) / weight
            assert np.allclose(total / weight, expected, atol=1e-6)
        finally:
            for link in links.values():
                link.close()


class ProcessStopped(Exception):
    """Stands for the dealer's process dying mid-way."""


class StopsAtUpload:
    """A dealer's link that dies at its first upload, after the public context went through."""

    def __init__(self, link: GrpcLink) -> None:
        self.link = link

    def publish_context(self, job_id: str, public_context: bytes, key_id: bytes, attestation: bytes = b"") -> None:
        self.link.publish_context(job_id, public_context, key_id, attestation)

    def upload(self, payload: Payload) -> None:
        raise ProcessStopped


def test_a_dealer_that_stopped_before_its_evaluation_keys_uploads_them_when_it_comes_back(tmp_path: Path) -> None:
    """The dealer keeps its secret, publishes the public context, and stops before its evaluation keys reach the
    coordinator.  Restarted from its state directory it is not asked to deal again (the context is in), so the
    relay tells it, and only it, that it owes the evaluation keys; its next look at the relay uploads them and
    the Gram job becomes ready."""
    config = dataclasses.replace(
        tiny_job(tmp_path, rounds=1, participants_per_round=3, min_participants=3, aggregator="norm_bound"),
        he=HESection(enabled=True, mode="single_key"), robust=RobustSection(max_malicious=1))
    params = config.he_params(gram_defence=True)
    with LiveCoordinator(tmp_path / "coord") as coordinator:
        admin = AdminClient(coordinator.target)
        job_id = admin.create_job(dump_toml(config))
        links = {n: GrpcLink(coordinator.target, n, give_up_after_s=5) for n in ("a", "b")}
        state = tmp_path / "state-a"
        try:
            before = KeyHolder(StopsAtUpload(links["a"]), params, job_id, state)  # type: ignore[arg-type]
            assert links["a"].join(job_id, 30, 4, SIZE, before.public_key).deal_keys
            with pytest.raises(ProcessStopped):
                before.joined("a", deal=True)
            assert before.secret is not None
            secret = before.secret
            holder_b = KeyHolder(links["b"], params, job_id)
            holder_b.joined("b", links["b"].join(job_id, 30, 4, SIZE, holder_b.public_key).deal_keys)
            keys = coordinator.call(lambda: coordinator.server.jobs.job(job_id).keys)
            assert not coordinator.call(keys.ready)
            assert not links["b"].keys(job_id).owes_evaluation_keys

            restarted = KeyHolder(links["a"], params, job_id, state)
            info = links["a"].join(job_id, 30, 4, SIZE, restarted.public_key)
            restarted.joined("a", info.deal_keys)
            assert not info.deal_keys and links["a"].keys(job_id).owes_evaluation_keys
            restarted.refresh()
            assert coordinator.call(keys.ready) and not links["a"].keys(job_id).owes_evaluation_keys
            holder_b.refresh()
            assert holder_b.require().key_id == secret.key_id
        finally:
            for link in links.values():
                link.close()
            admin.close()
