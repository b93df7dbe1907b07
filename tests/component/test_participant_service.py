"""The participant service on a real socket: every bad input gets its gRPC status, the round goes on."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedprompt.app.admin_client import AdminClient, load_prompt
from fedprompt.config import dump_toml
from fedprompt.errors import (
    DuplicateUpdate,
    InvalidUpdate,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    Unauthenticated,
)
from fedprompt.participant.grpc_link import GrpcLink
from fedprompt.protocol import Payload, PayloadHeader, TaskKind
from fedprompt.v1 import common_pb2, participant_pb2, participant_pb2_grpc
from fedprompt.wire import serde
from fedprompt.wire.payload import FLOAT32, encode_vector
from tests.support import LiveCoordinator, tiny_job

SIZE = 8


@dataclass
class Live:
    """A live coordinator whose plaintext job (a, b, c joined, a gave version 0) was started by ``admin``."""

    coordinator: LiveCoordinator
    admin: AdminClient
    job_id: str
    links: dict[str, GrpcLink]


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    with LiveCoordinator(tmp_path / "coord") as coordinator:
        admin = AdminClient(coordinator.target)
        job_id = admin.create_job(dump_toml(tiny_job(tmp_path, rounds=1, participants_per_round=3,
                                                     min_participants=2)))
        links = {name: GrpcLink(coordinator.target, name, give_up_after_s=5) for name in ("a", "b", "c")}
        for link in links.values():
            link.join(job_id, 30, 4, SIZE)
        links["a"].upload(Payload(job_id, 0, FLOAT32, SIZE, encode_vector(np.zeros(SIZE, np.float32))))
        admin.start(job_id)
        yield Live(coordinator, admin, job_id, links)
        for link in links.values():
            link.close()
        admin.close()


def upd(job_id: str, vector: np.ndarray, round_: int = 1, n: int = 10) -> Payload:
    return Payload(job_id, round_, FLOAT32, vector.size, encode_vector(vector), n)


def test_bad_updates_rejected_and_round_completes(live: Live) -> None:
    admin, job_id, links = live.admin, live.job_id, live.links
    ones = np.ones(SIZE, np.float32)
    with pytest.raises(InvalidUpdate, match="parameters"):
        links["a"].upload(upd(job_id, np.ones(SIZE + 3, np.float32)))
    nan = ones.copy()
    nan[0] = np.nan
    with pytest.raises(InvalidUpdate, match="NaN"):
        links["a"].upload(upd(job_id, nan))
    inf = ones.copy()
    inf[-1] = np.inf
    with pytest.raises(InvalidUpdate, match="NaN or Inf"):
        links["b"].upload(upd(job_id, inf))
    with pytest.raises(PreconditionFailed, match="round 7"):
        links["a"].upload(upd(job_id, ones, round_=7))
    links["a"].upload(upd(job_id, ones * 2, n=10))
    with pytest.raises(DuplicateUpdate):
        links["a"].upload(upd(job_id, ones, n=10))
    links["b"].upload(upd(job_id, ones * 5, n=30))
    links["c"].upload(upd(job_id, ones * 0, n=10))
    status = admin.status(job_id)
    assert status.state == "done" and status.global_version == 1
    got = np.frombuffer(links["a"].download(job_id, 1).data, "<f4")
    np.testing.assert_allclose(got, ones * (2 * 10 + 5 * 30) / 50, rtol=1e-6)


def test_unselected_participant_refused(tmp_path: Path) -> None:
    with LiveCoordinator(tmp_path / "coord") as coordinator:
        admin = AdminClient(coordinator.target)
        job_id = admin.create_job(dump_toml(tiny_job(tmp_path, participants_per_round=2, min_participants=2)))
        links = {n: GrpcLink(coordinator.target, n, give_up_after_s=5) for n in ("a", "b", "c")}
        for link in links.values():
            link.join(job_id, 10, 4, SIZE)
        links["a"].upload(Payload(job_id, 0, FLOAT32, SIZE, encode_vector(np.zeros(SIZE, np.float32))))
        admin.start(job_id)
        selected = admin.status(job_id).rounds[0].selected
        outsider = next(n for n in links if n not in selected)
        with pytest.raises(PermissionDenied, match="not selected"):
            links[outsider].upload(upd(job_id, np.ones(SIZE, np.float32)))
        for name in selected:
            links[name].upload(upd(job_id, np.ones(SIZE, np.float32)))
        assert admin.status(job_id).global_version == 1


def test_unknown_caller_and_missing_identity_refused(live: Live) -> None:
    coordinator, job_id = live.coordinator, live.job_id
    stranger = GrpcLink(coordinator.target, "mallory", give_up_after_s=5)
    with pytest.raises(PermissionDenied, match="has not joined"):
        stranger.upload(upd(job_id, np.ones(SIZE, np.float32)))
    with pytest.raises(PermissionDenied, match="has not joined"):
        stranger.get_task(job_id, 0)
    stub = participant_pb2_grpc.ParticipantServiceStub(stranger.channels[0])
    with pytest.raises(grpc.RpcError) as info:
        stub.GetTask(participant_pb2.GetTaskRequest(job_id=job_id))
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    bad_name = GrpcLink(coordinator.target, "bad name with spaces", give_up_after_s=5)
    with pytest.raises(Unauthenticated):
        bad_name.get_task(job_id, 0)


def raw_upload(link: GrpcLink, messages: list[participant_pb2.UploadUpdateRequest]) -> grpc.StatusCode:
    try:
        link.stub.UploadUpdate(iter(messages), metadata=link.metadata, timeout=10)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def header_msg(h: PayloadHeader) -> participant_pb2.UploadUpdateRequest:
    return participant_pb2.UploadUpdateRequest(header=serde.header_to_pb(h))


def chunk_msg(i: int, data: bytes) -> participant_pb2.UploadUpdateRequest:
    return participant_pb2.UploadUpdateRequest(chunk=common_pb2.PayloadChunk(index=i, data=data))


def test_malformed_streams_rejected(live: Live) -> None:
    admin, job_id, links = live.admin, live.job_id, live.links
    data = encode_vector(np.ones(SIZE, np.float32))
    good = PayloadHeader(job_id, 1, FLOAT32, SIZE, 10, len(data), 1, hashlib.sha256(data).digest())
    link = links["a"]
    assert raw_upload(link, [chunk_msg(0, data)]) is grpc.StatusCode.INVALID_ARGUMENT  # no header
    assert raw_upload(link, [header_msg(good)]) is grpc.StatusCode.INVALID_ARGUMENT  # chunks missing
    tampered = good.__class__(**{**good.__dict__, "sha256": hashlib.sha256(b"x").digest()})
    assert raw_upload(link, [header_msg(tampered), chunk_msg(0, data)]) is grpc.StatusCode.INVALID_ARGUMENT
    assert raw_upload(link, [header_msg(good), chunk_msg(1, data)]) is grpc.StatusCode.INVALID_ARGUMENT
    huge = good.__class__(**{**good.__dict__, "total_bytes": 10**9})
    assert raw_upload(link, [header_msg(huge)]) is grpc.StatusCode.RESOURCE_EXHAUSTED
    over = good.__class__(**{**good.__dict__, "num_chunks": 2})
    assert raw_upload(link, [header_msg(over), chunk_msg(0, data), chunk_msg(1, data)]) is \
        grpc.StatusCode.RESOURCE_EXHAUSTED
    wrong_job = good.__class__(**{**good.__dict__, "job_id": "nope"})
    assert raw_upload(link, [header_msg(wrong_job), chunk_msg(0, data)]) is grpc.StatusCode.NOT_FOUND
    assert raw_upload(link, [header_msg(good), header_msg(good)]) is grpc.StatusCode.INVALID_ARGUMENT
    assert raw_upload(link, [header_msg(good), chunk_msg(0, data)]) is grpc.StatusCode.OK
    assert admin.status(job_id).rounds[0].state == "training"


def test_wrong_encoding_and_inflated_weight_refused(live: Live) -> None:
    job_id, links = live.job_id, live.links
    with pytest.raises(InvalidUpdate):
        links["a"].upload(Payload(job_id, 1, "float64", SIZE, b"\0" * 8 * SIZE, 10))
    with pytest.raises(InvalidUpdate, match="exceeds"):
        links["a"].upload(upd(job_id, np.ones(SIZE, np.float32), n=31))


def test_tasks_flow_over_grpc(live: Live) -> None:
    job_id, links = live.job_id, live.links
    task = links["b"].get_task(job_id, 1)
    assert task.kind is TaskKind.EVALUATE and task.global_version == 0
    links["b"].report(job_id, 0, {"accuracy": 0.5}, 4)
    task = links["b"].get_task(job_id, 1)
    assert task.kind is TaskKind.TRAIN and task.round == 1


def test_admin_exports_the_latest_the_initial_or_a_named_version(live: Live, tmp_path: Path) -> None:
    admin, job_id, links = live.admin, live.job_id, live.links
    for name, scale in (("a", 1.0), ("b", 3.0), ("c", 2.0)):
        links[name].upload(upd(job_id, np.full(SIZE, scale, np.float32), n=10))
    assert admin.status(job_id).global_version == 1
    latest, _ = load_prompt(admin.export(job_id, tmp_path / "latest.safetensors"))
    initial, _ = load_prompt(admin.export(job_id, tmp_path / "v0.safetensors", 0))
    np.testing.assert_array_equal(latest, np.full(SIZE, 2.0, np.float32))
    np.testing.assert_array_equal(initial, np.zeros(SIZE, np.float32))  # version 0 is the initial prompt, not "latest"
    with pytest.raises(NotFound, match="no global version 5"):
        admin.export(job_id, tmp_path / "v5.safetensors", 5)
