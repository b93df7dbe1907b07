"""A Gram defence under threshold keys over real gRPC: the threshold key setup, the collective Gram evaluation
keys through GetGramKeys (in pages) and PublishGramKey, attested public-key uploads, SHARE tasks answered with
Gram shares then masked sum shares through DownloadDecryption and SubmitShare, a scaled update rejected, and a
stored version every member opens to the accepted sum only."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedprompt.app.admin_client import AdminClient
from fedprompt.config import HESection, RobustSection, dump_toml
from fedprompt.crypto.sealing import new_exchange_key, public_bytes
from fedprompt.models import load_backbone
from fedprompt.participant.codec import GramThresholdPart
from fedprompt.participant.grpc_link import GrpcLink
from fedprompt.participant.learners import local_learner
from fedprompt.participant.runtime import ParticipantRuntime
from fedprompt.participant.threshold_gramkeys import GramKeys
from fedprompt.participant.threshold_keys import ThresholdKeys
from fedprompt.protocol import Payload, TaskKind
from fedprompt.wire.threshold import ENCODING
from fedprompt.wire.threshold_gram import unpack_request
from tests.support import LiveCoordinator, tiny_job, toy_sites, wait_for

SIZE = 300
MEMBERS = ("a", "b", "c")
EXAMPLES = {"a": 70, "b": 110, "c": 50}
NORM_BOUND = 10.0


def delta(name: str) -> np.ndarray:
    scale = 20.0 if name == "c" else 1.0  # c boosts its update (model replacement)
    return np.random.default_rng(ord(name)).normal(0, 0.05, SIZE) * scale


def _part(keys: ThresholdKeys, grams: GramKeys, weigh: Callable[[int, bool], float]) -> GramThresholdPart:
    return GramThresholdPart(lambda: keys, weigh, lambda: grams, NORM_BOUND)


def test_threshold_norm_bound_over_grpc(tmp_path: Path) -> None:
    """min_participants = 2: members decrypt no accepted sum of fewer (``docs/he.md``, "The uploader floor"), and
    the two left once c is rejected are its sum; so max_malicious = 0 (norm bounding with f = 1 judges no fewer
    than 2f + 1 = 3 updates, above that minimum), which still rejects by the norm factor."""
    config = dataclasses.replace(
        tiny_job(tmp_path, rounds=1, participants_per_round=3, min_participants=2, aggregator="norm_bound",
                 allowed_participants=MEMBERS),
        he=HESection(enabled=True, gram_norm_bound=NORM_BOUND), robust=RobustSection(max_malicious=0))
    params = config.he.threshold_params(len(MEMBERS), gram=True)
    with LiveCoordinator(tmp_path / "coord") as coordinator:
        admin = AdminClient(coordinator.target)
        job_id = admin.create_job(dump_toml(config))
        links = {n: GrpcLink(coordinator.target, n, give_up_after_s=5) for n in MEMBERS}
        keys, grams, parts = {}, {}, {}
        try:
            for name, link in links.items():
                exchange = new_exchange_key()
                link.join(job_id, EXAMPLES[name], 4, SIZE, public_bytes(exchange))
                keys[name] = ThresholdKeys(job_id, MEMBERS, name, params, exchange, tmp_path / name, None,
                                           config.job.min_participants)
                grams[name] = GramKeys(keys[name])
                parts[name] = _part(keys[name], grams[name], config.summand_weight)
            for _ in range(3):
                for name in MEMBERS:
                    keys[name].refresh(links[name])
            assert all(k.ready for k in keys.values())
            for _ in range(3):
                done = [grams[name].refresh(links[name]) for name in MEMBERS]
            assert all(done)
            links["a"].upload(Payload(job_id, 0, ENCODING, SIZE, parts["a"].encode(0, np.zeros(SIZE), 1)))
            admin.start(job_id)
            job = coordinator.call(lambda: coordinator.server.jobs.job(job_id))
            wait_for(lambda: coordinator.call(lambda: job.open), 10, what="round 1")
            attempt = coordinator.call(lambda: job.open.attempt)
            for name, n in EXAMPLES.items():
                links[name].upload(Payload(job_id, 1, ENCODING, SIZE, parts[name].encode(1, delta(name), n, attempt),
                                           num_examples=n))
            phases = []
            for _ in range(200):
                if coordinator.call(lambda: job.latest_version()) == 1:
                    break
                for name, link in links.items():
                    task = link.get_task(job_id, 0)
                    if task.kind is TaskKind.SHARE:
                        request = unpack_request(link.decryption(job_id, 1).data)
                        phases.append(request.phase)
                        link.submit_share(job_id, 1, request.attempt, grams[name].answer(request, SIZE, NORM_BOUND))
            assert coordinator.call(lambda: job.latest_version()) == 1
            assert phases == ["gram"] * params.t + ["sum"] * params.t
            flags = admin.flags(job_id)
            assert {f.participant_id for f in flags.flags if not f.accepted} == {"c"}
            weights = {name: config.summand_weight(EXAMPLES[name]) for name in ("a", "b")}
            expected = sum(delta(name) * w for name, w in weights.items())
            for name in MEMBERS:
                total, weight = grams[name].open_version(links[name].download(job_id, 1).data, SIZE)
                assert abs(weight - sum(weights.values())) < 1e-3 and np.abs(total - expected).max() < 1e-3
        finally:
            for link in links.values():
                link.close()


@pytest.mark.slow
def test_participant_runtimes_run_a_threshold_gram_job_over_grpc(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    """The daemon's code path: three ``ParticipantRuntime``s on ``GrpcLink``s set the keys up, train, share and
    evaluate until the job is done, and end on the same global, each combined from the stored version itself."""
    names = tuple(f"site-{k}" for k in range(3))
    config = dataclasses.replace(
        tiny_job(tiny_encoder_dir, rounds=1, participants_per_round=3, min_participants=3, aggregator="norm_bound",
                 allowed_participants=names),
        he=HESection(enabled=True, gram_norm_bound=NORM_BOUND), robust=RobustSection(max_malicious=1, norm_factor=2.0))
    backbone = load_backbone(str(tiny_encoder_dir))
    with LiveCoordinator(tmp_path / "coord") as coordinator:
        admin = AdminClient(coordinator.target)
        job_id = admin.create_job(dump_toml(config))
        links = [GrpcLink(coordinator.target, name, give_up_after_s=5) for name in names]
        sites = [ParticipantRuntime(link, site, job_id, lambda cfg: local_learner(cfg, backbone),
                                    state_dir=tmp_path / name)
                 for link, name, site in zip(links, names, toy_sites(3), strict=True)]
        try:
            for site in sites:
                site.join()
            admin.start(job_id)
            for _ in range(100):
                if admin.status(job_id).state == "done":
                    break
                for site in sites:
                    site.service_keys()
                    task = site.link.get_task(job_id, 0)
                    if task.kind not in (TaskKind.WAIT, TaskKind.DONE):
                        site.handle(task)
            assert admin.status(job_id).state == "done"
            finals = [site.global_vector(1) for site in sites]
            assert all(np.array_equal(finals[0], f) for f in finals[1:]) and np.isfinite(finals[0]).all()
        finally:
            for link in links:
                link.close()
            admin.close()
