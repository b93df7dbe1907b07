"""A participant facing a coordinator that is not there retries, then says clearly what is wrong; given several
addresses (a failover pair's replicas) it moves on to the next one that answers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fedprompt.app.admin_client import AdminClient
from fedprompt.app.bench.pgserver import free_port
from fedprompt.config import ParticipantSection, dump_toml
from fedprompt.errors import ConfigError, PermissionDenied
from fedprompt.participant.grpc_link import CoordinatorUnreachable, GrpcLink
from tests.support import LiveCoordinator, fedprompt_process, tiny_job


def test_link_retries_then_names_the_address() -> None:
    target = f"127.0.0.1:{free_port()}"
    link = GrpcLink(target, "site-a", retry_initial_s=0.05, retry_max_s=0.2, give_up_after_s=1.0, rpc_timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(CoordinatorUnreachable, match=f"coordinator at {target} unreachable"):
        link.describe("job")
    assert time.monotonic() - started >= 1.0
    link.close()


def test_daemon_exits_with_a_clear_message(tmp_path: Path) -> None:
    data = tmp_path / "site"
    data.mkdir()
    (data / "train.jsonl").write_text('{"text": "fine", "label": "pos"}\n')
    log = tmp_path / "p.log"
    proc = fedprompt_process(["participant", "run", "--insecure", "--coordinator", f"127.0.0.1:{free_port()}", "--job", "j",
                              "--data-dir", str(data), "--no-progress", "--set", "participant.give_up_after_s=1.0",
                              "--set", "participant.retry_initial_s=0.1"], log)
    assert proc.wait(60) == 2
    text = log.read_text()
    assert "coordinator not reachable, retrying" in text and "fedprompt: error: coordinator at" in text


def test_link_moves_to_the_next_address_when_one_is_unavailable(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    with LiveCoordinator(tmp_path / "coord") as coordinator:
        admin = AdminClient(coordinator.target)
        job_id = admin.create_job(dump_toml(tiny_job(tmp_path)))
        admin.close()
        link = GrpcLink(f"{dead}, {coordinator.target}", "a", retry_initial_s=0.05, retry_max_s=0.2,
                        give_up_after_s=10.0)
        try:
            assert link.addresses == [dead, coordinator.target] and link.current == 0
            assert link.describe(job_id).job_id == job_id  # refused at the dead address, answered at the next
            assert link.current == 1
            link.describe(job_id)
            assert link.current == 1  # stays with the address that answers
            link.current = 0
            with pytest.raises(Exception, match="UNAVAILABLE"):
                link.heartbeat(job_id, 1.0)  # a beat is not retried, but the next one goes to the next address
            assert link.current == 1
            with pytest.raises(PermissionDenied, match="has not joined"):  # answered: by the live coordinator
                link.heartbeat(job_id, 5.0)
        finally:
            link.close()


def test_link_with_every_address_down_names_them_all() -> None:
    targets = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    link = GrpcLink(targets, "a", retry_initial_s=0.05, retry_max_s=0.2, give_up_after_s=1.0, rpc_timeout_s=1.0)
    with pytest.raises(CoordinatorUnreachable, match=f"coordinator at {targets} unreachable"):
        link.describe("job")
    link.close()


def test_participant_config_names_a_bad_address_in_the_list() -> None:
    ParticipantSection(coordinator="a:1, b:2", job="j", data_dir="d", insecure=True).validate("participant")
    with pytest.raises(ConfigError, match="participant.coordinator"):
        ParticipantSection(coordinator="a:1,b", job="j", data_dir="d", insecure=True).validate("participant")
