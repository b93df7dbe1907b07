"""Health service, graceful drain and heartbeats on a real socket; the daemon's stop handler with real signals."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from fedprompt.app.admin_client import AdminClient
from fedprompt.app.synthetic import SyntheticParticipant
from fedprompt.config import dump_toml
from fedprompt.errors import DuplicateUpdate, PermissionDenied
from fedprompt.participant.daemon import Stopped, install_stop_handler
from fedprompt.participant.grpc_link import GrpcLink
from fedprompt.participant.heartbeat import Heartbeat
from fedprompt.protocol import TaskKind
from tests.support import LiveCoordinator, health, tiny_job


def test_health_serving_then_not_serving_and_long_polls_released_on_drain(tmp_path: Path) -> None:
    with LiveCoordinator(tmp_path / "coord") as live:
        assert health(live.target) == health_pb2.HealthCheckResponse.SERVING
        assert health(live.target, "fedprompt.v1.ParticipantService") == health_pb2.HealthCheckResponse.SERVING
        admin = AdminClient(live.target)
        job_id = admin.create_job(dump_toml(tiny_job(tmp_path)))
        link = GrpcLink(live.target, "a", give_up_after_s=5)
        SyntheticParticipant(link, "a", job_id, 8).join()
        began = time.monotonic()
        poll = threading.Thread(target=lambda: link.get_task(job_id, 20.0))  # WAIT: the job has not started
        poll.start()
        time.sleep(0.5)
        asyncio.run_coroutine_threadsafe(live.server.drain(), live.loop).result(10)
        poll.join(10)
        assert not poll.is_alive() and time.monotonic() - began < 5
        assert health(live.target) == health_pb2.HealthCheckResponse.NOT_SERVING
        link.close()
        admin.close()


def test_heartbeats_refresh_liveness_and_unknown_members_are_refused(tmp_path: Path) -> None:
    with LiveCoordinator(tmp_path / "coord", offline_after_s=60.0) as live:
        admin = AdminClient(live.target)
        job_id = admin.create_job(dump_toml(tiny_job(tmp_path)))
        link = GrpcLink(live.target, "a", give_up_after_s=5)
        SyntheticParticipant(link, "a", job_id, 8).join()
        seen = {p.participant_id: p.last_seen for p in admin.participants(job_id)}
        with Heartbeat(link, job_id, 0.2) as beat:
            time.sleep(1.0)
        assert beat.beats >= 3
        later = {p.participant_id: p.last_seen for p in admin.participants(job_id)}
        assert later["a"] > seen["a"]
        assert link.heartbeat(job_id, 5) == "created"
        stranger = GrpcLink(live.target, "mallory", give_up_after_s=5)
        with pytest.raises(PermissionDenied, match="has not joined"):
            stranger.heartbeat(job_id, 5)
        for closing in (stranger, link, admin):
            closing.close()


def test_retried_upload_after_a_lost_answer_is_acknowledged_once(tmp_path: Path) -> None:
    with LiveCoordinator(tmp_path / "coord") as live:
        admin = AdminClient(live.target)
        job_id = admin.create_job(dump_toml(tiny_job(tmp_path, rounds=1, participants_per_round=2, min_participants=2)))
        people = [SyntheticParticipant(GrpcLink(live.target, n, give_up_after_s=5), n, job_id, 8) for n in "ab"]
        for p in people:
            p.join()
        admin.start(job_id)
        a = people[0]
        while a.step(1.0).kind is not TaskKind.TRAIN:
            pass
        a.link.upload(a.update(1))  # the same bytes again, as after a lost answer: OK, not ALREADY_EXISTS
        assert admin.status(job_id).rounds[-1].reported == ("a",)
        assert [p.updates_accepted for p in admin.participants(job_id)] == [1, 0]
        changed = a.update(1)
        tampered = type(changed)(changed.job_id, 1, changed.encoding, 8, np.ones(8, "<f4").tobytes(), changed.num_examples)
        with pytest.raises(DuplicateUpdate, match="already submitted"):
            a.link.upload(tampered)
        for p in people:
            assert isinstance(p.link, GrpcLink)
            p.link.close()
        admin.close()


class _Worker:
    """Just the two attributes the stop handler reads and writes."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.busy = False


def test_sigterm_stops_an_idle_daemon_at_once_and_a_busy_one_after_its_task() -> None:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    worker = _Worker()
    try:
        install_stop_handler(worker)  # type: ignore[arg-type]
        worker.busy = True
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert worker.stop.is_set()  # finishing the task in hand; the run loop stops after it
        with pytest.raises(Stopped, match="second signal"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        idle = _Worker()
        install_stop_handler(idle)  # type: ignore[arg-type]
        with pytest.raises(Stopped, match="idle"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        assert idle.stop.is_set()
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_health_command_over_mtls_with_a_probe_certificate(tmp_path: Path) -> None:
    from fedprompt.app.cli import build_parser
    from tests.support import ThrowawayPki

    pki = ThrowawayPki(tmp_path / "pki")
    probe = pki.tls("probe:k8s")  # the probe role: health checks only (the coordinator's own is server-auth)

    def check(target: str) -> int:
        args = build_parser().parse_args(["coordinator", "health", "--coordinator", target, "--ca-cert", probe.ca_cert,
                                          "--cert", probe.cert, "--key", probe.key, "--server-name", "localhost",
                                          "--timeout", "2"])
        return int(args.fn(args))

    with LiveCoordinator(tmp_path / "coord", pki) as live:
        target = live.target
        assert check(target) == 0
    assert check(target) == 1
