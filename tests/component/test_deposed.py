"""A call that reaches a deposed coordinator replica (its lease taken over, its ticker not yet aware) is refused
UNAVAILABLE, naming why, and writes nothing; a participant given both replicas' addresses moves on to the active
one.  Two real servers on one real SQLite file share the lease (``coordinator.lease``); the deposed one renews
only at its 10-second tick, so its 1-second lease lapses and the other takes it over while it still serves."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from fedprompt.app.synthetic import SyntheticParticipant
from fedprompt.config import dump_toml
from fedprompt.coordinator.jobs import JobManager
from fedprompt.coordinator.store import Store
from fedprompt.errors import Deposed, FedPromptError, NotActive
from fedprompt.participant.grpc_link import GrpcLink
from fedprompt.v1 import participant_pb2, participant_pb2_grpc
from fedprompt.wire.channel import open_channel
from fedprompt.wire.rpc import error_from_rpc, status_for
from tests.support import LiveCoordinator, tiny_job, wait_for


def test_deposed_and_standby_refusals_map_to_unavailable() -> None:
    assert status_for(Deposed("x")) is grpc.StatusCode.UNAVAILABLE
    assert status_for(NotActive("x")) is grpc.StatusCode.UNAVAILABLE


def test_a_call_reaching_a_deposed_replica_is_refused_unavailable_and_the_link_moves_on(tmp_path: Path) -> None:
    location = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    job_id = JobManager(Store(location)).create_job(dump_toml(tiny_job(tmp_path, participants_per_round=1,
                                                                       min_participants=1)))
    with LiveCoordinator(tmp_path / "a", store=location, lease_ttl_s=1.0, replica="a", tick_s=10.0) as deposed:
        time.sleep(1.3)  # a renews at its next tick, in 10 s: its lease lapses first
        with LiveCoordinator(tmp_path / "b", store=location, lease_ttl_s=1.0, replica="b") as active:
            assert Store(location).lease()[:2] == ("b", 2)
            assert not deposed.server.ended.is_set()  # a does not know yet, and still serves
            channel = open_channel(deposed.target, None)
            with pytest.raises(grpc.RpcError) as refused:
                participant_pb2_grpc.ParticipantServiceStub(channel).Join(
                    participant_pb2.JoinRequest(job=job_id, num_train_examples=10, num_test_examples=1,
                                                vector_size=64), metadata=(("x-fedprompt-identity", "a"),), timeout=10)
            channel.close()
            assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "was taken over" in str(refused.value.details())
            assert type(error_from_rpc(refused.value)) is FedPromptError  # as for a coordinator that is down
            assert [m.participant_id for m in Store(location).members(job_id)] == []  # a wrote nothing
            link = GrpcLink(f"{deposed.target},{active.target}", "a", retry_initial_s=0.05, retry_max_s=0.2,
                            give_up_after_s=30)
            assert SyntheticParticipant(link, "a", job_id, 64).join().job_id == job_id
            assert link.current == 1  # refused by the deposed replica, joined at the active one
            link.close()
            assert [m.participant_id for m in Store(location).members(job_id)] == ["a"]
            wait_for(deposed.server.ended.is_set, 15, what="a noticing it was deposed")
