"""The audit trail against a real mTLS coordinator: each admin action, done or refused, is listed by
``fedprompt admin audit`` in order with the admin's verified identity, and the trail survives a restart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedprompt.app.admin_client import AdminClient
from fedprompt.app.cli import main
from fedprompt.app.synthetic import SyntheticParticipant
from fedprompt.config import dump_toml
from fedprompt.errors import NotFound, PreconditionFailed
from fedprompt.logs import configure
from fedprompt.participant.grpc_link import GrpcLink
from tests.support import LiveCoordinator, ThrowawayPki, tiny_job


def audit_cli(capfd: pytest.CaptureFixture[str], target: str, pki: ThrowawayPki, *argv: str) -> str:
    """What ``fedprompt admin audit ARGV`` prints as admin:alice, through ``main``."""
    tls = pki.tls("admin:alice")
    capfd.readouterr()
    try:
        code = main(["--log-level", "error", "admin", "audit", *argv, "--coordinator", target,
                     "--ca-cert", tls.ca_cert, "--cert", tls.cert, "--key", tls.key, "--server-name", "localhost"])
        out, err = capfd.readouterr()
    finally:
        with capfd.disabled():
            configure("warning")  # main() pointed logging at the captured stderr
    assert code == 0, err
    return out


def audit_json(capfd: pytest.CaptureFixture[str], target: str, pki: ThrowawayPki,
               *argv: str) -> list[dict[str, object]]:
    entries: list[dict[str, object]] = json.loads(audit_cli(capfd, target, pki, *argv, "--format", "json"))
    return entries


def test_admin_actions_done_and_refused_are_listed_in_order_and_survive_a_restart(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    pki = ThrowawayPki(tmp_path / "pki")
    config = dump_toml(tiny_job(tmp_path, rounds=1, participants_per_round=1, min_participants=1,
                                allowed_participants=("*",)))
    with LiveCoordinator(tmp_path / "coord", pki) as coordinator:
        admin = AdminClient(coordinator.target, pki.tls("admin:alice"))
        link = GrpcLink(coordinator.target, give_up_after_s=5, tls=pki.tls("participant:a"))
        try:
            job_id = admin.create_job(config)
            member = SyntheticParticipant(link, "a", job_id, 8)
            member.join()
            admin.start(job_id)
            admin.pause(job_id)
            admin.start(job_id)
            member.run(wait_s=1.0)
            admin.export(job_id, tmp_path / "prompt.safetensors")
            with pytest.raises(PreconditionFailed):
                admin.cancel(job_id)  # the job is done
            with pytest.raises(NotFound):
                admin.export(job_id, tmp_path / "never.safetensors", version=99)
            with pytest.raises(NotFound):
                admin.start("no-such-job")
        finally:
            link.close()
            admin.close()
        listed = audit_json(capfd, coordinator.target, pki)
        table = audit_cli(capfd, coordinator.target, pki).splitlines()
    expected = [("create", job_id, "ok"), ("start", job_id, "ok"), ("pause", job_id, "ok"), ("start", job_id, "ok"),
                ("export", job_id, "ok"), ("cancel", job_id, "JobStateError"),
                ("export", job_id, "NotFound"), ("start", "no-such-job", "NotFound")]
    assert [(e["action"], e["job_id"], e["outcome"]) for e in listed] == expected
    assert {e["identity"] for e in listed} == {"admin:alice"}
    seqs = [int(str(e["seq"])) for e in listed]
    times = [float(str(e["at"])) for e in listed]
    assert seqs == sorted(seqs) and times == sorted(times)
    assert listed[0]["arguments"] == {"config_toml": config[:200]}
    assert [e["arguments"] for e in listed if e["action"] == "export"] == [{"version": None}, {"version": 99}]
    assert table[0].split()[:3] == ["seq", "time", "(UTC)"] and len(table) == 2 + len(expected)
    assert "admin:alice" in table[-1] and "no-such-job" in table[-1] and "NotFound" in table[-1]

    with LiveCoordinator(tmp_path / "coord", pki) as coordinator:
        assert audit_json(capfd, coordinator.target, pki) == listed
        assert audit_json(capfd, coordinator.target, pki, "--job", job_id, "--limit", "2") == listed[5:7]


def test_a_revocation_by_admin_ca_revoke_is_audited_with_the_identity_it_was_seen_under(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    pki = ThrowawayPki(tmp_path / "pki")
    config = dump_toml(tiny_job(tmp_path, rounds=2, participants_per_round=1, min_participants=1,
                                allowed_participants=("*",)))
    with LiveCoordinator(tmp_path / "coord", pki) as coordinator:
        admin = AdminClient(coordinator.target, pki.tls("admin:alice"))
        link = GrpcLink(coordinator.target, give_up_after_s=5, tls=pki.tls("participant:a"))
        try:
            job_id = admin.create_job(config)
            SyntheticParticipant(link, "a", job_id, 8).join()  # the coordinator has seen participant:a
            serial = pki.ca.serials_of("participant:a")[0]
            assert main(["--log-level", "error", "admin", "ca", "revoke", "--dir", str(pki.ca.dir),
                         "--identity", "participant:a"]) == 0
            pki.tls("participant:never")  # issued, never seen by the coordinator
            never = pki.ca.serials_of("participant:never")[0]
            assert main(["--log-level", "error", "admin", "ca", "revoke", "--dir", str(pki.ca.dir),
                         "--serial", f"{never:x}"]) == 0
        finally:
            link.close()
            admin.close()
        listed = audit_json(capfd, coordinator.target, pki)  # this call makes the coordinator re-read the list
    revocations = [e for e in listed if e["action"] == "revoke"]
    crl = str(pki.coordinator_settings()["crl"])
    # seen at one re-read of the list or at two (a loaded machine), so compared in serial order
    by_serial = sorted(((e["identity"], e["job_id"], e["outcome"], e["arguments"]) for e in revocations),
                       key=lambda row: int(str(row[3]["serial"]), 16))  # type: ignore[index]
    assert by_serial == sorted([
        ("ca", "", "ok", {"serial": f"{serial:x}", "revoked": "participant:a", "crl": crl}),
        ("ca", "", "ok", {"serial": f"{never:x}", "revoked": "never seen", "crl": crl})],
        key=lambda row: int(str(row[3]["serial"]), 16))
    assert float(str(revocations[0]["at"])) >= float(str(listed[0]["at"]))
