"""How an institution joins, exactly as the README tells it: CLI commands in order, a coordinator process on mTLS."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedprompt.config import dump_toml
from fedprompt.errors import Unauthenticated
from fedprompt.participant.grpc_link import GrpcLink
from fedprompt.wire.channel import ClientTls
from tests.support import REPO, fedprompt_process, stopping, tiny_job, wait_for


def fedprompt(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "fedprompt", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
def test_institution_joins_then_is_revoked(tmp_path: Path) -> None:
    ca, coord, alice, site = (tmp_path / d for d in ("ca", "coord", "alice", "site"))
    # the federation admin: a CA, the coordinator's certificate (with the names it is reached by), an admin's
    fedprompt("admin", "ca", "init", "--dir", str(ca))
    fedprompt("admin", "ca", "issue", "--dir", str(ca), "--identity", "coordinator:main", "--san", "127.0.0.1",
              "--san", "localhost", "--out", str(coord))
    fedprompt("admin", "ca", "issue", "--dir", str(ca), "--identity", "admin:alice", "--out", str(alice))
    # the institution: a key that never leaves it, and a signing request it sends to the admin
    fedprompt("admin", "ca", "csr", "--identity", "participant:hospital-a", "--out", str(site))
    assert (site / "participant-hospital-a.key").exists()
    out = fedprompt("admin", "ca", "sign", "--dir", str(ca), "--csr", str(site / "participant-hospital-a.csr"),
                    "--out", str(site / "participant-hospital-a.crt"))
    assert "participant:hospital-a" in out
    port_file = tmp_path / "port"
    server = fedprompt_process(["coordinator", "serve", "--listen", "127.0.0.1:0", "--state-dir", str(coord),
                                "--ca-cert", str(ca / "ca.crt"), "--cert", str(coord / "coordinator-main.crt"),
                                "--key", str(coord / "coordinator-main.key"), "--crl", str(ca / "crl.pem"),
                                "--port-file", str(port_file)], tmp_path / "coordinator.log")
    with stopping(server):
        port = int(wait_for(lambda: port_file.exists() and port_file.read_text().strip(), 60, what="coordinator"))
        target = f"127.0.0.1:{port}"
        admin = ["admin", "--coordinator", target, "--ca-cert", str(ca / "ca.crt"), "--cert",
                 str(alice / "admin-alice.crt"), "--key", str(alice / "admin-alice.key")]
        job_toml = tmp_path / "job.toml"
        job_toml.write_text(dump_toml(tiny_job(tmp_path, name="study",
                                               allowed_participants=("participant:hospital-a",))))
        job_id = fedprompt(*admin, "create", str(job_toml)).strip()
        link = GrpcLink(target, tls=ClientTls(str(ca / "ca.crt"), str(site / "participant-hospital-a.crt"),
                                              str(site / "participant-hospital-a.key")), give_up_after_s=5)
        assert link.join("study", 10, 4, 8).participant_id == "participant:hospital-a"
        assert "participant:hospital-a" in fedprompt(*admin, "participants", job_id)
        fedprompt("admin", "ca", "revoke", "--dir", str(ca), "--identity", "participant:hospital-a")
        with pytest.raises(Unauthenticated, match="revoked"):
            link.get_task(job_id, 0)
        link.close()
    log = (tmp_path / "coordinator.log").read_text()
    assert "mtls=True" in log and "certificate revoked" in log
