"""mTLS against a real coordinator on loopback, with real certificates from a throwaway federation CA.

Each refusal is checked by its gRPC status: handshake refusals (no certificate, foreign CA, expired) never
reach the servicer and surface as UNAVAILABLE; the coordinator refuses revoked certificates with
UNAUTHENTICATED and wrong roles / non-enrolled participants with PERMISSION_DENIED.
"""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedprompt.app.admin_client import AdminClient
from fedprompt.app.cli import main
from fedprompt.config import CoordinatorSection, ParticipantSection, dump_toml
from fedprompt.coordinator.server import SERVICES
from fedprompt.errors import ConfigError, PermissionDenied, ResourceExhausted, Unauthenticated
from fedprompt.logs import configure
from fedprompt.participant.grpc_link import GrpcLink
from fedprompt.protocol import Payload
from fedprompt.v1 import admin_pb2, admin_pb2_grpc, participant_pb2, participant_pb2_grpc
from fedprompt.wire import serde
from fedprompt.wire.channel import ClientTls, open_channel
from fedprompt.wire.payload import FLOAT32, encode_vector
from tests.support import COORDINATOR_METHODS, LiveCoordinator, ThrowawayPki, call_method, tiny_job, wait_for

SIZE = 8
SITES = ("participant:a", "participant:b", "participant:c")


@pytest.fixture
def pki(tmp_path: Path) -> ThrowawayPki:
    return ThrowawayPki(tmp_path / "federation")


def describe(target: str, tls: ClientTls | None, job: str = "tiny") -> grpc.StatusCode:
    """One DescribeJob call over a fresh channel; the status it ends with."""
    channel = open_channel(target, tls)
    try:
        participant_pb2_grpc.ParticipantServiceStub(channel).DescribeJob(
            participant_pb2.DescribeJobRequest(job=job), timeout=10)
    except grpc.RpcError as exc:
        return exc.code()
    finally:
        channel.close()
    return grpc.StatusCode.OK


def start_job(coordinator: LiveCoordinator, pki: ThrowawayPki, tmp: Path, **job: object):
    admin = AdminClient(coordinator.target, pki.tls("admin:alice"))
    job_id = admin.create_job(dump_toml(tiny_job(tmp, **{"allowed_participants": SITES, "rounds": 1, **job})))
    links = {name: GrpcLink(coordinator.target, tls=pki.tls(name), give_up_after_s=2) for name in SITES}
    for link in links.values():
        link.join(job_id, 30, 4, SIZE)
    links[SITES[0]].upload(Payload(job_id, 0, FLOAT32, SIZE, encode_vector(np.zeros(SIZE, np.float32))))
    admin.start(job_id)
    return admin, job_id, links


def update(job_id: str, value: float, n: int = 10) -> Payload:
    return Payload(job_id, 1, FLOAT32, SIZE, encode_vector(np.full(SIZE, value, np.float32)), n)


def test_handshake_refusals(tmp_path: Path, pki: ThrowawayPki) -> None:
    foreign = ThrowawayPki(tmp_path / "foreign")
    with LiveCoordinator(tmp_path / "coord", pki) as coordinator:
        AdminClient(coordinator.target, pki.tls("admin:alice")).create_job(
            dump_toml(tiny_job(tmp_path, allowed_participants=("*",))))
        assert describe(coordinator.target, pki.tls("participant:a")) is grpc.StatusCode.OK  # the control
        assert describe(coordinator.target, None) is grpc.StatusCode.UNAVAILABLE  # plaintext
        no_cert = grpc.secure_channel(coordinator.target, grpc.ssl_channel_credentials(
            pki.ca.ca_cert_path.read_bytes()))  # TLS, but no client certificate
        with pytest.raises(grpc.RpcError) as info:
            participant_pb2_grpc.ParticipantServiceStub(no_cert).DescribeJob(
                participant_pb2.DescribeJobRequest(job="tiny"), timeout=10)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        mallory = foreign.tls("participant:a")  # same name, signed by another CA
        assert describe(coordinator.target, ClientTls(str(pki.ca.ca_cert_path), mallory.cert, mallory.key)) is \
            grpc.StatusCode.UNAVAILABLE
        expired = pki.tls("participant:a", days=1, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
        assert describe(coordinator.target, expired) is grpc.StatusCode.UNAVAILABLE
        # the client checks the coordinator too: a server certificate from another CA is refused
        assert describe(coordinator.target, ClientTls(str(foreign.ca.ca_cert_path), *_files(pki.tls("participant:a")))) \
            is grpc.StatusCode.UNAVAILABLE


def _files(tls: ClientTls) -> tuple[str, str]:
    return tls.cert, tls.key


def test_roles_and_allow_list(tmp_path: Path, pki: ThrowawayPki) -> None:
    with LiveCoordinator(tmp_path / "coord", pki) as coordinator:
        admin, job_id, links = start_job(coordinator, pki, tmp_path)
        as_admin = AdminClient(coordinator.target, pki.tls("participant:a"))
        with pytest.raises(PermissionDenied, match="needs the admin role"):
            as_admin.jobs()
        with pytest.raises(PermissionDenied, match="needs the admin role"):
            as_admin.create_job(dump_toml(tiny_job(tmp_path, allowed_participants=("*",))))
        assert describe(coordinator.target, pki.tls("admin:alice"), job_id) is grpc.StatusCode.PERMISSION_DENIED
        outsider = GrpcLink(coordinator.target, tls=pki.tls("participant:d"), give_up_after_s=2)
        with pytest.raises(PermissionDenied, match="not on the allow-list"):
            outsider.join(job_id, 30, 4, SIZE)
        with pytest.raises(PermissionDenied, match="not on the allow-list"):
            outsider.describe(job_id)
        with pytest.raises(PermissionDenied, match="has not joined"):
            outsider.upload(update(job_id, 1.0))
        # members see the job without its allow-list
        assert "participant:b" not in links[SITES[0]].describe(job_id).config_toml
        assert "participant:b" in admin.status(job_id).config_toml
        # identity comes from the certificate: a forged header changes nothing
        stub = participant_pb2_grpc.ParticipantServiceStub(outsider.channels[0])
        with pytest.raises(grpc.RpcError) as info:
            stub.Join(participant_pb2.JoinRequest(job=job_id, num_train_examples=30, vector_size=SIZE),
                      metadata=(("x-fedprompt-identity", "participant:a"),), timeout=10)
        assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert sorted(p.participant_id for p in admin.participants(job_id)) == list(SITES)


def test_probe_certificate_reaches_health_and_nothing_else(tmp_path: Path, pki: ThrowawayPki, capfd) -> None:
    """``admin ca issue --identity probe:k8s`` makes the certificate the Kubernetes probes use: the health service
    answers it SERVING (for the whole server and each service), every participant and admin method refuses it."""
    try:
        assert main(["admin", "ca", "issue", "--dir", str(pki.ca.dir), "--identity", "probe:k8s",
                     "--out", str(tmp_path / "tls")]) == 0
        assert "probe-k8s.crt" in capfd.readouterr().out
    finally:
        with capfd.disabled():
            configure("warning")  # main() pointed logging at the captured stderr
    probe = ClientTls(str(pki.ca.ca_cert_path), str(tmp_path / "tls" / "probe-k8s.crt"),
                      str(tmp_path / "tls" / "probe-k8s.key"))
    with LiveCoordinator(tmp_path / "coord", pki) as coordinator:
        job_id = AdminClient(coordinator.target, pki.tls("admin:alice")).create_job(
            dump_toml(tiny_job(tmp_path, allowed_participants=("*",))))
        channel = open_channel(coordinator.target, probe)
        try:
            health = health_pb2_grpc.HealthStub(channel)
            for service in SERVICES:
                answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
            assert {m.containing_service.name for m in COORDINATOR_METHODS} == {"ParticipantService", "AdminService"}
            for method in COORDINATOR_METHODS:
                request = GetMessageClass(method.input_type)()
                for name in ("job", "job_id"):  # a real job, so only the role can be the reason
                    if name in request.DESCRIPTOR.fields_by_name:
                        setattr(request, name, job_id)
                code, details = call_method(channel, method, request)
                assert code is grpc.StatusCode.PERMISSION_DENIED, f"{method.name}: {code.name} {details}"
                assert "probe:k8s has the probe role" in details
        finally:
            channel.close()
        cli = ["coordinator", "health", "--coordinator", coordinator.target, "--ca-cert", probe.ca_cert, "--cert",
               probe.cert, "--key", probe.key, "--server-name", "localhost"]
        try:
            assert main(cli) == 0 and "SERVING" in capfd.readouterr().out
        finally:
            with capfd.disabled():
                configure("warning")


def test_empty_allow_list_refused(tmp_path: Path, pki: ThrowawayPki) -> None:
    with LiveCoordinator(tmp_path / "coord", pki) as coordinator:
        stub = admin_pb2_grpc.AdminServiceStub(open_channel(coordinator.target, pki.tls("admin:alice")))
        with pytest.raises(grpc.RpcError) as info:
            stub.CreateJob(admin_pb2.CreateJobRequest(config_toml=dump_toml(tiny_job(tmp_path,
                                                                                      allowed_participants=()))))
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "job.allowed_participants" in info.value.details()


def test_revoked_while_running_discards_in_flight_update(tmp_path: Path, pki: ThrowawayPki) -> None:
    with LiveCoordinator(tmp_path / "coord", pki) as coordinator:
        admin, job_id, links = start_job(coordinator, pki, tmp_path)
        a, b, c = (links[s] for s in SITES)
        a.upload(update(job_id, 2.0, 10))
        b.upload(update(job_id, 7.0, 30))
        assert admin.status(job_id).rounds[0].reported == ("participant:a", "participant:b")
        pki.ca.revoke(pki.ca.serials_of("participant:b"))  # the coordinator runs on; it re-reads the CRL
        wait_for(lambda: admin.status(job_id).rounds[0].reported == ("participant:a",), 5,
                 what="the revoked participant's update to be discarded")
        with pytest.raises(Unauthenticated, match="revoked"):
            b.get_task(job_id, 0)
        c.upload(update(job_id, 4.0, 10))  # the last remaining selected member: the round aggregates now
        status = admin.status(job_id)
        assert status.state == "done" and status.rounds[0].selected == ("participant:a", "participant:c")
        got = np.frombuffer(a.download(job_id, 1).data, "<f4")
        np.testing.assert_allclose(got, np.full(SIZE, (2.0 * 10 + 4.0 * 10) / 20), rtol=1e-6)
        assert {p.participant_id: p.state for p in admin.participants(job_id)}["participant:b"] == "revoked"


def test_revoked_during_upload_stream(tmp_path: Path, pki: ThrowawayPki) -> None:
    with LiveCoordinator(tmp_path / "coord", pki) as coordinator:
        admin, job_id, links = start_job(coordinator, pki, tmp_path)
        released = threading.Event()
        header_sent = threading.Event()

        def messages():
            for message in serde.payload_messages(update(job_id, 1.0), participant_pb2.UploadUpdateRequest):
                if message.HasField("chunk"):
                    header_sent.set()
                    released.wait(10)
                yield message

        call = links["participant:a"].stub.UploadUpdate.future(messages(), timeout=20)
        assert header_sent.wait(10)
        pki.ca.revoke(pki.ca.serials_of("participant:a"))
        released.set()
        with pytest.raises(grpc.RpcError) as info:
            call.result()
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert admin.status(job_id).rounds[0].reported == ()


def test_unusable_crl_fails_closed(tmp_path: Path, pki: ThrowawayPki) -> None:
    local = ThrowawayPki(tmp_path / "pki")
    with LiveCoordinator(tmp_path / "coord", local) as coordinator:
        tls = local.tls("participant:a")
        good = local.ca.crl_path.read_bytes()
        local.ca.crl_path.write_bytes(pki.ca.crl_path.read_bytes())  # a CRL signed by another CA
        assert describe(coordinator.target, tls) is grpc.StatusCode.UNAUTHENTICATED
        local.ca.crl_path.write_bytes(good)
        assert describe(coordinator.target, tls) is grpc.StatusCode.NOT_FOUND  # authenticated again; no such job


def test_rate_limit_per_identity(tmp_path: Path, pki: ThrowawayPki) -> None:
    with LiveCoordinator(tmp_path / "coord", pki, rate_limit_per_s=0.01, rate_limit_burst=5) as coordinator:
        admin = AdminClient(coordinator.target, pki.tls("admin:alice"))
        job_id = admin.create_job(dump_toml(tiny_job(tmp_path, allowed_participants=("*",))))
        greedy = GrpcLink(coordinator.target, tls=pki.tls("participant:a"), give_up_after_s=2)
        for _ in range(5):
            greedy.describe(job_id)
        with pytest.raises(ResourceExhausted, match="calls per second"):
            greedy.describe(job_id)
        GrpcLink(coordinator.target, tls=pki.tls("participant:b"), give_up_after_s=2).describe(job_id)  # others fine


def test_insecure_conflicts_with_certificates(tmp_path: Path, pki: ThrowawayPki, capfd) -> None:
    with pytest.raises(ConfigError, match="coordinator.insecure: cannot be combined with coordinator.cert"):
        CoordinatorSection(insecure=True, cert="c.pem").validate("coordinator")
    with pytest.raises(ConfigError, match="coordinator.ca_cert: required for mTLS"):
        CoordinatorSection().validate("coordinator")
    with pytest.raises(ConfigError, match="participant.insecure: cannot be combined with participant.key"):
        ParticipantSection(job="j", data_dir="d", insecure=True, key="k.pem").validate("participant")
    with pytest.raises(ConfigError, match="participant.name: is for --insecure only"):
        ParticipantSection(job="j", data_dir="d", name="x", ca_cert="a", cert="b", key="c").validate("participant")
    try:
        assert main(["coordinator", "serve", "--insecure", "--cert", "c.pem", "--state-dir", str(tmp_path)]) == 2
        assert "cannot be combined with coordinator.cert" in capfd.readouterr().err
        assert main(["admin", "--insecure", "--cert", "c.pem", "jobs"]) == 2
        assert main(["admin", "jobs"]) == 2
        assert "calls to the coordinator use mTLS" in capfd.readouterr().err
    finally:
        with capfd.disabled():
            configure("warning")  # main() pointed logging at the captured stderr
    with LiveCoordinator(tmp_path / "coord"):
        pass
    assert "coordinator running with --insecure" in capfd.readouterr().err
