"""An encrypted Gram defence over real gRPC: evaluation keys uploaded in chunks, DECRYPT tasks, GetGram and
ReportGram, a scaled update rejected, and the aggregate holding only the accepted updates."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from crypto.ckks import ENCODING
from crypto.gram import decrypt_gram
from fedprompt.admin_client import AdminClient
from fedprompt.config import HESection, RobustSection, dump_toml
from fedprompt.errors import PermissionDenied
from fedprompt.protocol import Payload, TaskKind
from participant.grpc_link import GrpcLink
from participant.keys import KeyHolder
from tests.support import LiveCoordinator, tiny_job, wait_for

SIZE = 300
WEIGHTS = {"a": 7, "b": 11, "c": 5}


def delta(name: str) -> np.ndarray:
    scale = 20.0 if name == "c" else 1.0  # c boosts its update (model replacement)
    return np.random.default_rng(ord(name)).normal(0, 0.05, SIZE) * scale


def test_encrypted_norm_bound_over_grpc(tmp_path: Path) -> None:
    config = dataclasses.replace(
        tiny_job(tmp_path, rounds=1, participants_per_round=3, min_participants=3, aggregator="norm_bound"),
        he=HESection(enabled=True), robust=RobustSection(max_malicious=1))
    with LiveCoordinator(tmp_path / "coord") as coordinator:
        admin = AdminClient(coordinator.target)
        job_id = admin.create_job(dump_toml(config))
        links = {n: GrpcLink(coordinator.target, n, give_up_after_s=5) for n in WEIGHTS}
        holders = {n: KeyHolder(link, config.he_params(), job_id) for n, link in links.items()}
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
