"""Admin-signed job configs over real gRPC with mTLS (``config.signed``): the admin client signs what it submits
with its certificate's key, the coordinator keeps the statement and relays it in ``DescribeJob``, and a member
(the participant runtime, with its own certificate) refuses to join when the relay between it and the coordinator
shows it a roster of the relay's choosing or strips the signature; the coordinator refuses at submission a
statement about another config."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fedprompt.app.admin_client import AdminClient
from fedprompt.config import HESection, JobConfig, check_job_config, dump_toml, parse_toml, sign_config
from fedprompt.crypto.attest import KeyCredentials, KeySigner
from fedprompt.crypto.pki import load_cert, load_key
from fedprompt.errors import InvalidRequest, RelayRefused
from fedprompt.participant.grpc_link import GrpcLink
from fedprompt.participant.runtime import ParticipantRuntime
from fedprompt.protocol import JobDescription
from fedprompt.v1 import admin_pb2
from fedprompt.wire.channel import ClientTls
from tests.support import LiveCoordinator, ThrowawayPki, tiny_job, toy_sites

MEMBERS = ("participant:a", "participant:b", "participant:c")
Tamper = Callable[[JobDescription], JobDescription]


class Relay(GrpcLink):
    """The path between a member and the coordinator, under the attacker's control: ``tamper`` rewrites the job
    description the coordinator answers."""

    def __init__(self, target: str, tls: ClientTls) -> None:
        super().__init__(target, tls=tls, give_up_after_s=5)
        self.tamper: Tamper = lambda description: description

    def describe(self, job: str) -> JobDescription:
        return self.tamper(super().describe(job))


def _threshold_job(pki: ThrowawayPki) -> JobConfig:
    config = tiny_job(pki.dir, name="signed", rounds=1, allowed_participants=MEMBERS)
    return dataclasses.replace(config, he=HESection(enabled=True, mode="threshold"))


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[tuple[ThrowawayPki, LiveCoordinator, AdminClient]]:
    pki = ThrowawayPki(tmp_path / "federation")
    with LiveCoordinator(tmp_path / "coord", pki) as coordinator:
        admin = AdminClient(coordinator.target, pki.tls("admin:alice"))
        yield pki, coordinator, admin
        admin.close()


def _never(config: JobConfig) -> object:
    raise AssertionError("the member built a learner for a config it should have refused")


def test_a_member_joins_only_the_config_its_admin_signed(
        federation: tuple[ThrowawayPki, LiveCoordinator, AdminClient], tmp_path: Path) -> None:
    pki, coordinator, admin = federation
    job_id = admin.create_job(dump_toml(_threshold_job(pki)))
    tls = pki.tls(MEMBERS[0])
    credentials = KeyCredentials.from_files(Path(tls.ca_cert), Path(tls.cert), Path(tls.key))
    relay = Relay(coordinator.target, tls)
    try:
        honest = relay.describe(job_id)  # relayed as the admin signed it, with the federation CRL
        assert honest.config_signature and honest.crl.startswith(b"-----BEGIN X509 CRL-----")
        shown = parse_toml(honest.config_toml, JobConfig)
        assert check_job_config(credentials.trust, honest.config_signature, honest.config_toml, shown) == "admin:alice"

        def colluders(d: JobDescription) -> JobDescription:
            return dataclasses.replace(d, config_toml=d.config_toml.replace("participant:b", "participant:x"))

        for tamper, why in ((colluders, "not the key it signed"),
                            (lambda d: dataclasses.replace(d, config_signature=b""), "not signed by an admin")):
            relay.tamper = tamper
            state = tmp_path / "site"
            site = ParticipantRuntime(relay, toy_sites(1)[0], job_id, _never,  # type: ignore[arg-type]
                                      state_dir=state, credentials=credentials)
            with pytest.raises(RelayRefused, match=why):
                site.join()
            assert not state.exists()  # nothing written, no learner built, not joined
        job = coordinator.call(lambda: coordinator.server.jobs.job(job_id))
        assert coordinator.call(lambda: len(job.roster.members)) == 0
    finally:
        relay.close()


def test_a_signature_about_another_config_is_refused_at_submission(
        federation: tuple[ThrowawayPki, LiveCoordinator, AdminClient]) -> None:
    pki, _, admin = federation
    tls = pki.tls("admin:alice")
    signer = KeySigner(load_cert(Path(tls.cert)), load_key(Path(tls.key)))
    config = _threshold_job(pki)
    other = dataclasses.replace(config, he=HESection(enabled=True, mode="threshold", threshold=3))
    request = admin_pb2.CreateJobRequest(config_toml=dump_toml(config),
                                         config_signature=sign_config(signer, dump_toml(other)))
    with pytest.raises(InvalidRequest, match="not the key it signed"):
        admin._unary("CreateJob", request)
    assert admin.jobs() == []
