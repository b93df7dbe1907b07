"""A burst of calls beyond gRPC's pending-call queue: every waiting member's next call arrives at once when a round
opens.  With gRPC's default queue (1000, at most 3000 at once) calls beyond it are cancelled; with
``max_pending_calls`` raised to the burst, every call gets its answer."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import grpc
import pytest

from fedprompt.config import CoordinatorSection
from fedprompt.errors import ConfigError
from fedprompt.v1 import participant_pb2, participant_pb2_grpc
from tests.support import LiveCoordinator

BURST = 4000


def _burst(target: str) -> collections.Counter[str]:
    """``BURST`` DescribeJob calls at once, from distinct identities over a few connections: each one's status."""
    async def run() -> collections.Counter[str]:
        channels = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(8)]

        async def one(i: int) -> str:
            stub = participant_pb2_grpc.ParticipantServiceStub(channels[i % len(channels)])
            try:
                await stub.DescribeJob(participant_pb2.DescribeJobRequest(job="no-such-job"),
                                       metadata=(("x-fedprompt-identity", f"p{i}"),), timeout=120)
            except grpc.aio.AioRpcError as exc:
                return exc.code().name
            return "OK"

        try:
            return collections.Counter(await asyncio.gather(*(one(i) for i in range(BURST))))
        finally:
            for channel in channels:
                await channel.close()

    return asyncio.run(run())


def test_a_burst_beyond_grpcs_default_queue_is_answered_when_max_pending_calls_covers_it(tmp_path: Path) -> None:
    with LiveCoordinator(tmp_path / "default") as coordinator:
        default = _burst(coordinator.target)
    assert default["CANCELLED"] > 0 and default["CANCELLED"] + default["NOT_FOUND"] == BURST
    with LiveCoordinator(tmp_path / "raised", max_pending_calls=BURST) as coordinator:
        assert _burst(coordinator.target) == {"NOT_FOUND": BURST}  # every call reached the servicer


def test_max_pending_calls_is_validated() -> None:
    with pytest.raises(ConfigError, match="coordinator.max_pending_calls"):
        CoordinatorSection(insecure=True, max_pending_calls=10).validate("coordinator")
