"""SIGTERM on real coordinator and participant processes, and the load benchmark at a small size."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import cast

import pytest
from grpc_health.v1 import health_pb2

from fedprompt.app.admin_client import AdminClient
from fedprompt.app.bench.load import run_load
from fedprompt.app.bench.pgserver import free_port
from fedprompt.config import dump_toml
from tests.faults import CoordinatorProcess, daemon
from tests.support import fedprompt_process, health, stopping, tiny_job, toy_sites, wait_for, write_site

pytestmark = pytest.mark.slow


def test_sigterm_stops_both_daemons_cleanly(tmp_path: Path, tiny_encoder_dir: Path) -> None:
    coordinator = CoordinatorProcess(tmp_path, free_port()).start()
    assert health(coordinator.target) == health_pb2.HealthCheckResponse.SERVING
    admin = AdminClient(coordinator.target)
    job_id = admin.create_job(dump_toml(tiny_job(tiny_encoder_dir)))
    site = daemon(coordinator.target, job_id, "site", write_site(toy_sites(1)[0], tmp_path / "data"),
                  tmp_path / "state", tmp_path / "site.log")
    with stopping(site):
        wait_for(lambda: admin.status(job_id).participants == 1, 120, what="daemon to join")
        wait_for(lambda: "initial vector provided" in (tmp_path / "site.log").read_text(), 30, what="idle daemon")
        site.send_signal(signal.SIGTERM)
        assert site.wait(30) == 0
    assert "participant stopped" in (tmp_path / "site.log").read_text()
    admin.close()
    assert coordinator.proc is not None
    coordinator.proc.send_signal(signal.SIGTERM)
    assert coordinator.proc.wait(30) == 0
    log = coordinator.log(1)
    assert log.index("coordinator draining") < log.index("coordinator stopped")


def test_load_bench_small(tmp_path: Path) -> None:
    report = run_load(participants=16, rounds=2, clients=2, workdir=tmp_path)
    assert list(report)[:6] == ["participants", "rounds_completed", "p50_round_s", "p95_round_s",
                                "coordinator_peak_rss_mb", "errors"]
    assert (report["participants"], report["rounds_completed"], report["errors"]) == (16, 2, 0)
    assert cast(float, report["coordinator_peak_rss_mb"]) > 0


def test_backup_of_a_running_coordinator_restores_its_jobs(tmp_path: Path) -> None:
    coordinator = CoordinatorProcess(tmp_path, free_port()).start()
    admin = AdminClient(coordinator.target)
    job_id = admin.create_job(dump_toml(tiny_job(tmp_path)))
    backup = fedprompt_process(["coordinator", "backup", "--state-dir", str(tmp_path / "coordinator-state"),
                                "--out", str(tmp_path / "restored" / "coordinator-state" / "coordinator.sqlite")],
                               tmp_path / "backup.log")
    assert backup.wait(60) == 0, (tmp_path / "backup.log").read_text()
    admin.close()
    assert coordinator.stop() == 0
    restored = CoordinatorProcess(tmp_path / "restored", free_port()).start()
    admin = AdminClient(restored.target)
    assert admin.status(job_id).state == "created"
    admin.close()
    assert restored.stop() == 0
