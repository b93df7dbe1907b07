"""Threshold-CKKS jobs over real gRPC with mTLS: three participant runtimes (the daemon's task loop, each on its
own ``GrpcLink`` with a certificate of a throwaway federation CA) set their keys up through the coordinator's
relay with attested shares (read in pages), run two rounds with seeded uploads and masked decryption shares,
and each unmasks the same global itself; the coordinator stores only combined downloads it cannot unmask."""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedprompt.app.admin_client import AdminClient
from fedprompt.config import HESection, dump_toml
from fedprompt.coordinator.store import JobState
from fedprompt.crypto.attest import KeyCredentials
from fedprompt.errors import NotSelected, PreconditionFailed, RelayRefused
from fedprompt.models import load_backbone
from fedprompt.participant.grpc_link import GrpcLink
from fedprompt.participant.learners import local_learner
from fedprompt.participant.runtime import ParticipantRuntime
from fedprompt.protocol import Payload, TaskKind
from fedprompt.v1 import participant_pb2
from fedprompt.wire.threshold import ENCODING, pack_version, unpack_version
from tests.support import LiveCoordinator, ThrowawayPki, tiny_job, toy_sites, wait_for

NAMES = ("participant:a", "participant:b", "participant:c")


class OneUploaderRelay(GrpcLink):
    """The path between a member and an actively malicious coordinator: every decryption request it relays
    names the first of its uploaders as the round's only one."""

    def decryption(self, job_id: str, round_: int) -> Payload:
        payload = super().decryption(job_id, round_)
        request = unpack_version(payload.data, request=True)
        forged = dataclasses.replace(request, uploaders=request.uploaders[:1])
        return dataclasses.replace(payload, data=pack_version(forged))


def _run_job(tiny_encoder_dir: Path, tmp_path: Path, coordinator: LiveCoordinator, pki: ThrowawayPki,
             link: type[GrpcLink], until: Callable[[JobState], bool]) -> tuple[str, dict[str, GrpcLink],
                                                                             list[BaseException], AdminClient]:
    """Create a two-round threshold job of ``NAMES`` as its admin, join three participant runtimes (each on a
    ``link`` with its own certificate), start it and run them in threads until ``until(state)`` or an error."""
    config = tiny_job(tiny_encoder_dir, rounds=2, allowed_participants=NAMES)
    config = dataclasses.replace(config, he=HESection(enabled=True, mode="threshold"))
    admin = AdminClient(coordinator.target, pki.tls("admin:alice"))
    job_id = admin.create_job(dump_toml(config))
    links: dict[str, GrpcLink] = {}
    sites: dict[str, ParticipantRuntime] = {}
    for name, data in zip(NAMES, toy_sites(), strict=True):
        tls = pki.tls(name)
        links[name] = link(coordinator.target, tls=tls, give_up_after_s=10)
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
        except BaseException as exc:  # noqa: BLE001 - reported by the callers' assertions
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(site,), daemon=True) for site in sites.values()]
    for thread in threads:
        thread.start()
    wait_for(lambda: until(coordinator.call(lambda: job.state)) or bool(errors), 240, what="job state")
    for site in sites.values():
        site.stop.set()
    for thread in threads:
        thread.join(30)
    return job_id, links, errors, admin


def test_a_threshold_job_runs_over_mtls_and_every_member_combines_the_same_global(
        tiny_encoder_dir: Path, tmp_path: Path) -> None:
    pki = ThrowawayPki(tmp_path / "federation")
    # a 512 KiB message limit: the key relay (~330 KB for three members) then comes in pages of 256 KiB
    finals = [tmp_path / name.split(":")[1] / "globals" / "version-0002.npy" for name in NAMES]
    with LiveCoordinator(tmp_path / "coord", pki, max_message_bytes=512 * 1024) as coordinator:
        # done once every member has opened the last global too: the job can be DONE a poll before the last
        # member has fetched it
        job_id, links, errors, admin = _run_job(tiny_encoder_dir, tmp_path, coordinator, pki, GrpcLink,
                                                lambda state: state is JobState.DONE
                                                and all(path.exists() for path in finals))
        job = coordinator.call(lambda: coordinator.server.jobs.job(job_id))
        assert not errors and coordinator.call(lambda: job.state) is JobState.DONE
        store = coordinator.server.store
        for version in (1, 2):
            encoding, data = store.prompt(job_id, version)
            stored = unpack_version(data)
            assert encoding == ENCODING and len(stored.decryptors) == 2 and len(stored.uploaders) == 3
        vectors = [np.load(path) for path in finals]
        assert all(np.array_equal(vectors[0], v) for v in vectors[1:]) and np.isfinite(vectors[0]).all()
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


def test_a_decryption_request_naming_one_uploader_is_refused_and_pauses_the_job(
        tiny_encoder_dir: Path, tmp_path: Path) -> None:
    """An actively malicious coordinator names one member as round 1's only uploader: the decryptors it asks
    make no share, report it (``ReportKeyFault``) and stop; the job pauses with the reason, and no version is
    stored."""
    pki = ThrowawayPki(tmp_path / "federation")
    with LiveCoordinator(tmp_path / "coord", pki) as coordinator:
        job_id, links, errors, admin = _run_job(tiny_encoder_dir, tmp_path, coordinator, pki, OneUploaderRelay,
                                                lambda state: state is JobState.PAUSED)
        job = coordinator.call(lambda: coordinator.server.jobs.job(job_id))
        state, reason = coordinator.call(lambda: (job.state, job.lifecycle.reason))
        assert state is JobState.PAUSED and "key material refused by participant:" in str(reason)
        assert "names 1 distinct uploader(s), fewer than the job's minimum of 2" in str(reason)
        assert errors and all(isinstance(e, RelayRefused) for e in errors)
        assert coordinator.server.store.latest_version(job_id) == 0
        for link in links.values():
            link.close()
        admin.close()
