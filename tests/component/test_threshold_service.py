"""Threshold-CKKS jobs over real gRPC with mTLS: three participant runtimes (the daemon's task loop, each on its
own ``GrpcLink`` with a certificate of a throwaway federation CA) set their keys up through the coordinator's
relay with attested shares (read in pages), run two rounds with seeded uploads and masked decryption shares,
and each unmasks the same global itself; the coordinator stores only combined downloads it cannot unmask."""

from __future__ import annotations

import dataclasses
import functools
import threading
from pathlib import Path

import numpy as np
import pytest

from fedprompt.app.admin_client import AdminClient
from fedprompt.config import HESection, dump_toml
from fedprompt.coordinator.store import JobState
from fedprompt.crypto.attest import KeyCredentials
from fedprompt.errors import NotSelected, PreconditionFailed
from fedprompt.models import load_backbone
from fedprompt.participant.grpc_link import GrpcLink
from fedprompt.participant.learners import local_learner
from fedprompt.participant.runtime import ParticipantRuntime
from fedprompt.protocol import TaskKind
from fedprompt.v1 import participant_pb2
from fedprompt.wire.threshold import ENCODING, unpack_version
from tests.support import LiveCoordinator, ThrowawayPki, tiny_job, toy_sites, wait_for

NAMES = ("participant:a", "participant:b", "participant:c")


def test_a_threshold_job_runs_over_mtls_and_every_member_combines_the_same_global(
        tiny_encoder_dir: Path, tmp_path: Path) -> None:
    pki = ThrowawayPki(tmp_path / "federation")
    config = tiny_job(tiny_encoder_dir, rounds=2, allowed_participants=NAMES)
    config = dataclasses.replace(config, he=HESection(enabled=True, mode="threshold"))
    # a 512 KiB message limit: the key relay (~330 KB for three members) then comes in pages of 256 KiB
    with LiveCoordinator(tmp_path / "coord", pki, max_message_bytes=512 * 1024) as coordinator:
        admin = AdminClient(coordinator.target, pki.tls("admin:alice"))
        job_id = admin.create_job(dump_toml(config))
        links: dict[str, GrpcLink] = {}
        sites: dict[str, ParticipantRuntime] = {}
        for name, data in zip(NAMES, toy_sites(), strict=True):
            tls = pki.tls(name)
            links[name] = GrpcLink(coordinator.target, tls=tls, give_up_after_s=10)
            backbone = load_backbone(str(tiny_encoder_dir))  # one per site: they train in threads at once
            sites[name] = ParticipantRuntime(
                links[name], data, job_id, functools.partial(local_learner, backbone=backbone),
                state_dir=tmp_path / name.split(":")[1],
                credentials=KeyCredentials.from_files(Path(tls.ca_cert), Path(tls.cert), Path(tls.key)))
        for site in sites.values():
            site.join()
        admin.start(job_id)
        job = coordinator.call(lambda: coordinator.server.jobs.job(job_id))
        errors: list[BaseException] = []

        def work(site: ParticipantRuntime) -> None:
            try:
                site.run(poll_s=0.5)
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(site,), daemon=True) for site in sites.values()]
        for thread in threads:
            thread.start()
        wait_for(lambda: coordinator.call(lambda: job.state) is JobState.DONE or errors, 240, what="job done")
        for site in sites.values():
            site.stop.set()
        for thread in threads:
            thread.join(30)
        assert not errors and coordinator.call(lambda: job.state) is JobState.DONE
        store = coordinator.server.store
        for version in (1, 2):
            encoding, data = store.prompt(job_id, version)
            stored = unpack_version(data)
            assert encoding == ENCODING and len(stored.decryptors) == 2 and len(stored.uploaders) == 3
        finals = [np.load(tmp_path / name.split(":")[1] / "globals" / "version-0002.npy") for name in NAMES]
        assert all(np.array_equal(finals[0], f) for f in finals[1:]) and np.isfinite(finals[0]).all()
        # the servicers refuse a share request from a non-decryptor and for a round that is not decrypting
        with pytest.raises(PreconditionFailed):
            links[NAMES[0]].decryption(job_id, 3)
        with pytest.raises((NotSelected, PreconditionFailed)):
            links[NAMES[0]].submit_share(job_id, 2, 1, b"x")
        assert links[NAMES[0]].get_task(job_id, 0).kind is TaskKind.DONE
        # the key relay came in pages, each within the message limit, joined by the link
        first = links[NAMES[0]].stub.GetThresholdKeys(participant_pb2.GetThresholdKeysRequest(job_id=job_id),
                                                      metadata=links[NAMES[0]].metadata)
        assert first.next_page == 1 and first.ByteSize() < 512 * 1024
        state = links[NAMES[0]].threshold_keys(job_id)
        assert len(state.exchange) == len(state.shares) == 3 and len(state.dealt) == 2 and state.dealt_by_caller
        for link in links.values():
            link.close()
        admin.close()
