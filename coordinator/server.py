"""Wires the coordinator: store -> job manager -> servicers -> grpc.aio server, plus the round ticker."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc
import structlog

from coordinator.identity import InsecureAuthenticator
from coordinator.jobs import JobManager
from coordinator.notifier import Notifier
from coordinator.service import AdminService, ParticipantService
from coordinator.store import Store
from fedprompt.config import CoordinatorSection
from fedprompt.errors import ConfigError
from fedprompt.v1 import admin_pb2_grpc, participant_pb2_grpc

log = structlog.get_logger("coordinator.server")


class CoordinatorServer:
    """A running coordinator; ``start`` returns the bound port (``listen`` may use port 0)."""

    def __init__(self, settings: CoordinatorSection) -> None:
        if not settings.insecure:
            raise ConfigError("coordinator.insecure: certificate authentication is not available yet; "
                              "pass --insecure for local development")
        self.settings = settings
        self.store = Store(Path(settings.state_dir) / "coordinator.sqlite")
        self.jobs = JobManager(self.store, offline_after_s=settings.offline_after_s)
        self.notifier = Notifier()
        self.server: grpc.aio.Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> int:
        log.warning("coordinator running with --insecure: no TLS, identities are not verified")
        auth = InsecureAuthenticator()
        limit = self.settings.max_message_bytes
        self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
            # Accept the participants' keepalive pings (every 5 s) so dead links are noticed on both sides.
            ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.min_ping_interval_without_data_ms", 4000),
            ("grpc.http2.max_ping_strikes", 0),
        ])
        participant_pb2_grpc.add_ParticipantServiceServicer_to_server(
            ParticipantService(self.jobs, auth, self.notifier, self.settings.upload_timeout_s), self.server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminService(self.jobs, auth, self.notifier), self.server)
        self.port = self.server.add_insecure_port(self.settings.listen)
        if self.port == 0:
            raise ConfigError(f"coordinator.listen: cannot bind {self.settings.listen}")
        await self.server.start()
        self._ticker = asyncio.create_task(self._tick_forever())
        log.info("coordinator listening", address=self.settings.listen, port=self.port,
                 state=str(Path(self.settings.state_dir).resolve()))
        return self.port

    async def _tick_forever(self) -> None:
        while True:
            self.jobs.tick()
            self.notifier.notify()
            await asyncio.sleep(self.settings.tick_s)

    async def stop(self, grace: float = 2.0) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self.server is not None:
            await self.server.stop(grace)
        self.store.close()
        log.info("coordinator stopped")

    async def wait(self) -> None:
        if self.server is not None:
            await self.server.wait_for_termination()
