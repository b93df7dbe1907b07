"""A job across real network hosts (namespaces with their own addresses), over mTLS with the hosts'
addresses as certificate SANs; one participant's link is cut mid-round and restored: the round completes
without it and it rejoins later."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from fedprompt.app.admin_client import AdminClient
from fedprompt.config import dump_toml
from tests import netns
from tests.support import REPO, ThrowawayPki, stopping, tiny_job, toy_sites, wait_for, write_site

pytestmark = pytest.mark.slow

WHY_NOT = netns.netns_unavailable()


def spawn(host: netns.Host, args: list[str], log: Path):
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(host.command([sys.executable, "-m", "fedprompt", *args]), stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, env=env, cwd=REPO)


@pytest.mark.skipif(WHY_NOT is not None, reason=f"multi-host test skipped: {WHY_NOT}")
def test_link_cut_mid_round_then_rejoin(tmp_path: Path, tiny_encoder_dir: Path) -> None:
    names = ["coordinator", "site-0", "site-1", "site-2"]
    with netns.hosts(names) as net:
        coord = net["coordinator"]
        pki = ThrowawayPki(tmp_path / "pki")
        key, cert = pki.ca.issue("coordinator:main", tmp_path / "pki" / "main", [coord.address])  # SAN = its address
        coordinator = spawn(coord, ["coordinator", "serve", "--ca-cert", str(pki.ca.ca_cert_path), "--cert", str(cert),
                                    "--key", str(key), "--crl", str(pki.ca.crl_path), "--listen",
                                    f"{coord.address}:50051", "--state-dir", str(tmp_path / "coord")],
                            tmp_path / "coord.log")
        with stopping(coordinator):
            target = f"{coord.address}:50051"
            # The test process (the admin) reaches the coordinator through the bridge: give it an address there.
            bridge = _bridge_of(net)
            netns._ip("addr", "add", "10.213.7.2/24", "dev", bridge)
            admin = AdminClient(target, pki.tls("admin:operator"))
            wait_for(lambda: _reachable(admin), 60, what="coordinator on its namespace address")
            job = tiny_job(tiny_encoder_dir, rounds=3, participants_per_round=3, min_participants=2,
                           round_deadline_s=20.0)
            # ~200 local steps per round, so the cut below lands while site-2 is still training.
            job = dataclasses.replace(job, train=dataclasses.replace(job.train, max_steps=200, local_epochs=20))
            job_id = admin.create_job(dump_toml(job))
            sites = toy_sites(3, train=40)
            sites_tls = [pki.tls(f"participant:site-{k}") for k in range(3)]
            procs = [spawn(net[f"site-{k}"], ["participant", "run", "--coordinator", target, "--job", job_id,
                                              "--ca-cert", tls.ca_cert, "--cert", tls.cert, "--key", tls.key,
                                              "--data-dir",
                                              str(write_site(site, tmp_path / f"data-{k}")), "--no-progress",
                                              "--set", "participant.rpc_timeout_s=5.0",
                                              "--set", "participant.retry_max_s=1.0"],
                           tmp_path / f"site-{k}.log") for k, (site, tls) in enumerate(zip(sites, sites_tls))]
            with stopping(*procs):
                wait_for(lambda: admin.status(job_id).participants == 3, 120, what="three joins")
                admin.start(job_id)
                wait_for(lambda: any(r.round == 1 for r in admin.status(job_id).rounds), 120, interval=0.02,
                         what="round 1 open")
                netns.set_link(net["site-2"], up=False)
                wait_for(lambda: _round(admin, job_id, 1) == "done", 120, what="round 1 done without site-2")
                netns.set_link(net["site-2"], up=True)
                wait_for(lambda: admin.status(job_id).state == "done", 240, interval=0.5, what="job done")
                status = admin.status(job_id)
                by_round = {r.round: r for r in status.rounds if r.state == "done"}
                assert int(by_round[1].metrics["updates"]) == 2
                assert int(by_round[3].metrics["updates"]) == 3, "site-2 did not rejoin"
                wait_for(lambda: all(p.poll() is not None for p in procs), 120, what="participants to finish")
                assert [p.returncode for p in procs] == [0, 0, 0]
            admin.close()


def _bridge_of(net: dict[str, netns.Host]) -> str:
    import subprocess

    any_veth = next(iter(net.values())).veth_root
    out = subprocess.run(["ip", "-o", "link", "show", any_veth], capture_output=True, text=True, check=True).stdout
    return out.split(" master ")[1].split()[0]


def _reachable(admin: AdminClient) -> bool:
    try:
        admin.jobs()
    except Exception:
        return False
    return True


def _round(admin: AdminClient, job_id: str, number: int) -> str:
    states = [r.state for r in admin.status(job_id).rounds if r.round == number]
    return "done" if "done" in states else (states[-1] if states else "")
