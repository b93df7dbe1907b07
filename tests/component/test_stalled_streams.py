"""Streams that never finish, against a real mTLS coordinator with certificates from a throwaway federation CA.

Upload streams that send a valid header and then nothing, each on a TLS connection of its own, and TLS connections
that carry no call at all, from one identity and from several.  Meanwhile the admin service answers and an honest
job completes a round; the stalled streams are cut off at ``upload_timeout_s`` with FAILED_PRECONDITION, their
upload slots and buffered chunks are gone, the idle connections are closed at ``connection_idle_s``, and streams
beyond the upload caps (per identity, and coordinator-wide) are refused with RESOURCE_EXHAUSTED.  The bounds checked
here are structural (slots, assemblers alive, connections held); the memory they bound is measured by
``fedprompt bench stalls``, whose ``StalledUploads`` and ``IdleConnections`` these tests open in-process.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
from structlog.testing import capture_logs

from fedprompt.app.admin_client import AdminClient
from fedprompt.app.bench.stalls import IdleConnections, StalledUploads, held_connections
from fedprompt.config import dump_toml
from fedprompt.participant.grpc_link import GrpcLink
from fedprompt.protocol import Payload, PayloadHeader
from fedprompt.wire.payload import FLOAT32, ChunkAssembler, encode_vector
from tests.support import LiveCoordinator, ThrowawayPki, tiny_job, wait_for

SIZE = 8
#: The coordinator's ``upload_timeout_s`` and ``connection_idle_s`` here: idle connections go first, while the
#: stalled streams still hold their slots, so closing idle connections is seen not to cut a stream in progress.
TIMEOUT_S = 6.0
IDLE_S = 2.5
#: Upload slots per identity (``max_concurrent_uploads``, the default).
SLOTS = 2
#: Stalled streams and idle connections opened in each scenario, spread evenly over its identities.
STREAMS = 24
HONEST = ("participant:a", "participant:b", "participant:c")


def vector(job_id: str, round_: int, value: float) -> Payload:
    return Payload(job_id, round_, FLOAT32, SIZE, encode_vector(np.full(SIZE, value, np.float32)), 10)


def started_job(coordinator: LiveCoordinator, pki: ThrowawayPki, admin: AdminClient, tmp: Path, name: str,
                members: tuple[str, ...]) -> tuple[str, dict[str, GrpcLink]]:
    """A one-round job of ``members`` (all selected, all needed), joined over their own links and started."""
    job_id = admin.create_job(dump_toml(tiny_job(tmp, name=name, rounds=1, participants_per_round=len(members),
                                                 min_participants=len(members), round_deadline_s=600.0,
                                                 allowed_participants=members)))
    links = {who: GrpcLink(coordinator.target, tls=pki.tls(who), give_up_after_s=5) for who in members}
    for link in links.values():
        link.join(job_id, 30, 4, SIZE)
    links[members[0]].upload(vector(job_id, 0, 0.0))
    admin.start(job_id)
    return job_id, links


def server_connections(port: int) -> int:
    """TCP connections the coordinator, served from this process, holds on its port."""
    return held_connections(psutil.Process(), port)


def stalled_header(job_id: str) -> PayloadHeader:
    """A valid header of an update for round 1 of ``job_id``, sent by every stalled stream."""
    payload = vector(job_id, 1, 1.0)
    return payload.header(len(payload.data))


def assemblers_alive(job_id: str) -> int:
    """Upload buffers for ``job_id`` alive in this process: one per stream whose header was admitted and whose
    stream is open (by job, since an earlier test's objects may still be referenced, e.g. by a kept traceback)."""
    gc.collect()
    return sum(isinstance(o, ChunkAssembler) and getattr(o, "header", None) is not None and o.header.job_id == job_id
               for o in gc.get_objects())


def wait_released(in_progress: Callable[[], int], job_id: str) -> None:
    """Every cut stream's upload slot and buffer released: each handler thread releases them as it returns, which
    can be just after its status reached the client."""
    wait_for(lambda: in_progress() == 0 and assemblers_alive(job_id) == 0, 10,
             what="the cut streams' slots and upload buffers to be released")


@pytest.mark.parametrize("identities", [1, 8], ids=["one-identity", "eight-identities"])
def test_stalled_uploads_and_idle_connections_are_cut_off_while_a_round_completes(tmp_path: Path,
                                                                                  identities: int) -> None:
    pki = ThrowawayPki(tmp_path / "pki")
    stallers = tuple(f"participant:m{i}" for i in range(identities))
    per = STREAMS // identities
    held = identities * min(SLOTS, per)
    with LiveCoordinator(tmp_path / "coord", pki, upload_timeout_s=TIMEOUT_S, connection_idle_s=IDLE_S) as coordinator:
        def in_progress(who: str | None = None) -> int:
            return int(coordinator.call(lambda: coordinator.server.limiter.uploads_in_progress(who)))

        admin = AdminClient(coordinator.target, pki.tls("admin:alice"))
        honest_job, honest = started_job(coordinator, pki, admin, tmp_path, "honest", HONEST)
        target_job, own = started_job(coordinator, pki, admin, tmp_path, "target", stallers)
        credentials = {who: pki.tls(who) for who in stallers}
        stalls = StalledUploads(coordinator.target)
        idle: list[IdleConnections] = []
        try:
            for who in stallers:
                stalls.open(credentials[who], stalled_header(target_job), per)
            idle = [IdleConnections(coordinator.target, credentials[who], per) for who in stallers]
            wait_for(lambda: in_progress() == held and stalls.ended_so_far() == STREAMS - held, 10,
                     what=f"{held} streams to hold their slots and the other {STREAMS - held} to be refused")
            assert all(in_progress(who) == min(SLOTS, per) for who in stallers)
            assert assemblers_alive(target_job) == held  # the stalled streams' buffers: a header each, no chunk
            assert server_connections(coordinator.port) >= 2 * STREAMS  # a connection per stream and idle channel

            # meanwhile the coordinator answers its admin and an honest round completes
            assert admin.status(target_job).rounds[0].reported == ()
            for value, who in enumerate(HONEST):
                honest[who].upload(vector(honest_job, 1, float(value)))
            status = admin.status(honest_job)
            assert (status.state, status.global_version) == ("done", 1)
            # the idle connections are closed; the stalled streams' connections, which carry a call, are not
            wait_for(lambda: all(i.closed() for i in idle), IDLE_S + 10, what="idle connections to close")
            assert in_progress() == held, "the round and the idle closures must happen while the streams stall"

            outcomes = stalls.outcomes(60)
            cut = [o for o in outcomes if o.code is grpc.StatusCode.FAILED_PRECONDITION]
            refused = [o for o in outcomes if o.code is grpc.StatusCode.RESOURCE_EXHAUSTED]
            assert (len(cut), len(refused)) == (held, STREAMS - held)
            assert {o.details for o in cut} == {f"upload not completed within {TIMEOUT_S:g} s"}
            assert all(o.after_s >= TIMEOUT_S for o in cut)
            assert {o.details for o in refused} == {f"already {SLOTS} uploads in progress (at most {SLOTS})"}
            wait_released(in_progress, target_job)

            # the slots are free again: each stalling identity's real update is admitted, and its round completes
            for who in stallers:
                own[who].upload(vector(target_job, 1, 2.0))
            assert admin.status(target_job).global_version == 1
            assert in_progress() == 0
            wait_for(lambda: server_connections(coordinator.port) == 0, IDLE_S + 10,
                     what="the coordinator to close every connection left without a call")
        finally:
            stalls.close()
            for group in idle:
                group.close()
            for link in (*honest.values(), *own.values()):
                link.close()
            admin.close()


def test_uploads_beyond_the_coordinator_wide_cap_are_refused_until_the_stalls_are_cut_off(tmp_path: Path) -> None:
    """Four identities, each within its own two slots, stall eight streams against a cap of five: three are refused
    naming the cap, and so is an honest member's update while the cap is held (the price of a memory bound that
    does not grow with the number of certificates), with a hint to retry: its link retries until the stalls are
    cut off and the update is taken.  Then every other update is taken too."""
    pki = ThrowawayPki(tmp_path / "pki")
    cap = 5
    stallers = tuple(f"participant:m{i}" for i in range(4))
    with LiveCoordinator(tmp_path / "coord", pki, upload_timeout_s=TIMEOUT_S, max_uploads_total=cap) as coordinator:
        def in_progress() -> int:
            return int(coordinator.call(lambda: coordinator.server.limiter.uploads_in_progress()))

        admin = AdminClient(coordinator.target, pki.tls("admin:alice"))
        honest_job, honest = started_job(coordinator, pki, admin, tmp_path, "honest", HONEST)
        target_job, own = started_job(coordinator, pki, admin, tmp_path, "target", stallers)
        stalls = StalledUploads(coordinator.target)
        try:
            for who in stallers:
                stalls.open(pki.tls(who), stalled_header(target_job), SLOTS)
            wait_for(lambda: in_progress() == cap and stalls.ended_so_far() == 2 * len(stallers) - cap, 10,
                     what="the cap to be held and the streams beyond it refused")
            assert admin.status(honest_job).state == "running"
            patient = GrpcLink(coordinator.target, tls=pki.tls(HONEST[0]), give_up_after_s=60)
            with capture_logs() as logs:
                patient.upload(vector(honest_job, 1, 1.0))  # retried while the cap is held, taken once it is not
            patient.close()
            busy = [e for e in logs if e["event"] == "coordinator busy, retrying"]
            assert busy and {e["status"] for e in busy} == {"RESOURCE_EXHAUSTED"}

            outcomes = stalls.outcomes(60)
            assert sorted(o.code.name for o in outcomes) == ["FAILED_PRECONDITION"] * cap + \
                ["RESOURCE_EXHAUSTED"] * (2 * len(stallers) - cap)
            assert {o.details for o in outcomes if o.code is grpc.StatusCode.RESOURCE_EXHAUSTED} == {
                f"the coordinator already receives {cap} uploads (at most {cap} at once); retry later"}
            wait_released(in_progress, target_job)

            for who, link in (*list(honest.items())[1:], *own.items()):
                link.upload(vector(honest_job if who in honest else target_job, 1, 1.0))
            assert [admin.status(job).global_version for job in (honest_job, target_job)] == [1, 1]
        finally:
            stalls.close()
            for link in (*honest.values(), *own.values()):
                link.close()
            admin.close()
