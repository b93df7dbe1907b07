"""Wires the coordinator: store (the SQLite file or PostgreSQL database its ``store`` URL names) -> job manager
(resumed from the store) -> servicers -> grpc.aio server, plus the ticker (rounds, liveness, checkpoints) and
the standard gRPC health service.  With ``lease_ttl_s`` the replica first stands by until it holds the lease
(serving health NOT_SERVING and refusing every other call UNAVAILABLE meanwhile: ``coordinator.standby``), then
opens its jobs from the store, renews the lease at every tick, and ends (``ended``) when another replica has
taken it over.

The ticker is what handles every job's deadlines, so nothing but a stop ends it: a job whose step fails is
paused on its own (``JobManager.each``), and a whole step that fails (the CRL refresh, say) is logged and run
again at the next tick.

mTLS is the default: the server presents its certificate and requires a client certificate signed by the
federation CA (root certificates are always passed with ``require_client_auth=True``: without them gRPC
silently skips client authentication).  ``insecure`` serves plaintext for local development only and says
so at every start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedprompt.config import CoordinatorSection
from fedprompt.coordinator.audit import REVOKER, AuditTrail
from fedprompt.coordinator.checkpoint import Checkpointer
from fedprompt.coordinator.identity import Authenticator, CertificateAuthenticator, Gate, InsecureAuthenticator
from fedprompt.coordinator.jobs import MAX_ERROR, JobManager
from fedprompt.coordinator.lease import Lease
from fedprompt.coordinator.limits import CallLimiter
from fedprompt.coordinator.liveness import LivenessWatch
from fedprompt.coordinator.metrics import CoordinatorMetrics
from fedprompt.coordinator.notifier import Notifier
from fedprompt.coordinator.offload import WorkerThread
from fedprompt.coordinator.recovery import resume_jobs
from fedprompt.coordinator.service import AdminService, ParticipantService
from fedprompt.coordinator.standby import StandbyServer
from fedprompt.coordinator.store import Store
from fedprompt.crypto.errors import PkiError
from fedprompt.crypto.pki import load_cert
from fedprompt.errors import ConfigError, Deposed, Unauthenticated
from fedprompt.v1 import admin_pb2, admin_pb2_grpc, participant_pb2, participant_pb2_grpc
from fedprompt.wire.channel import server_credentials
from fedprompt.wire.rpc import DecodeGuard

log = structlog.get_logger("coordinator.server")

#: Seconds a call may wait to be taken up before gRPC cancels it: past every deadline participants set.
UNREQUESTED_S = 600

SERVICES = ("", participant_pb2.DESCRIPTOR.services_by_name["ParticipantService"].full_name,
            admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name)


class CoordinatorServer:
    """A running coordinator; ``start`` returns the bound port (``listen`` may use port 0)."""

    def __init__(self, settings: CoordinatorSection) -> None:
        settings.validate("coordinator")
        self.settings = settings
        self.store = Store(settings.store_url)
        self.lease: Lease | None = None
        self.ended = asyncio.Event()  # set when this replica was deposed: it stops serving (``coordinator.lease``)
        self._resigned = threading.Event()  # a stop while standing by (``resign``)
        if settings.lease_ttl_s:  # a standby waits in ``start``, before it reads any job, until the lease is its own
            self.lease = Lease(self.store, settings.replica or f"{socket.gethostname()}:{os.getpid()}",
                               settings.lease_ttl_s)
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._tick_errors: dict[str, str] = {}  # step -> its failure, logged once while it repeats
        self.port = 0
        self.metrics_port = 0  # where ``/metrics`` is served, once started with ``metrics_listen``
        self.auth: Authenticator = InsecureAuthenticator()
        self.limiter = CallLimiter(settings.rate_limit_per_s, settings.rate_limit_burst,
                                   settings.max_concurrent_uploads, settings.max_uploads_total)
        if self.lease is None:
            self._open()

    def _open(self) -> None:
        """Open the jobs from the store, as a restart does (``coordinator.recovery``), and what serves them."""
        settings = self.settings
        self.notifier = Notifier()
        self.worker = WorkerThread(self.notifier.notify)
        self.metrics = CoordinatorMetrics()
        self.audit = AuditTrail(self.store)
        self.jobs = JobManager(self.store, offline_after_s=settings.offline_after_s, offload=self.worker,
                               events=self.metrics)
        self.metrics.watch(self.jobs)
        resume_jobs(self.jobs)
        self.checkpoints = Checkpointer(Path(settings.state_dir) / "checkpoints")
        self.liveness = LivenessWatch()

    def _credentials(self) -> grpc.ServerCredentials:
        s = self.settings
        credentials = server_credentials("coordinator", s.ca_cert, s.cert, s.key)
        try:
            ca = load_cert(Path(s.ca_cert))
            self.auth = CertificateAuthenticator(ca, Path(s.crl), self._revoked)
        except PkiError as exc:
            raise ConfigError(f"coordinator: {exc}") from exc
        return credentials

    def _revoked(self, serial: int, identity: str | None) -> None:
        """A revocation the coordinator noticed in the CRL: recorded in the audit trail as the CA's action
        (whoever signed the CRL; the coordinator cannot name the operator), and the identity, if it was seen,
        expelled from every job."""
        with self.audit.action(REVOKER, "revoke", "", serial=f"{serial:x}", revoked=identity or "never seen",
                               crl=self.settings.crl):
            if identity is not None:
                self.jobs.expel(identity, "certificate revoked")
                self.notifier.notify()

    def _options(self) -> list[tuple[str, int]]:
        s = self.settings
        limit = s.max_message_bytes
        return [
            ("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
            # Accept the participants' keepalive pings (every 5 s) so dead links are noticed on both sides.
            ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.min_ping_interval_without_data_ms", 4000),
            ("grpc.http2.max_ping_strikes", 0),
            # Close connections that carry no call (idle TLS connections cost memory and a descriptor each).  Only
            # a connection without a call in progress counts as idle, so long-polls and uploads are never cut, and
            # the pings above do not keep one open: a participant's channel reconnects at its next call.
            ("grpc.max_connection_idle_ms", int(s.connection_idle_s * 1000)),
            # Calls not yet taken up (``max_pending_calls``): gRPC cancels calls beyond them; with its default
            # (1000, hard limit 3000) a burst of 10,000 members' calls lost 6,000 of them, CANCELLED.  It also
            # cancels a call not taken up within 30 s, which a busy round opening reached: a participant takes
            # CANCELLED as final, so a waiting call is bounded by its own deadline instead, whose expiry it retries.
            ("grpc.server.max_pending_requests", s.max_pending_calls),
            ("grpc.server.max_pending_requests_hard_limit", 3 * s.max_pending_calls),
            ("grpc.server_max_unrequested_time_in_server", UNREQUESTED_S),
        ]

    def resign(self) -> None:
        """A stop asked for while standing by: stop waiting for the lease (``start`` then returns 0)."""
        self._resigned.set()

    @property
    def active(self) -> bool:
        """Whether this replica serves its jobs (no lease, or the lease is its own)."""
        return self.lease is None or self.lease.token is not None

    async def _stand_by(self, lease: Lease, credentials: grpc.ServerCredentials | None) -> None:
        """Serve health NOT_SERVING on the replica's address while waiting for the lease, then open the jobs
        (unless ``resign`` came first)."""
        standby = StandbyServer(lease.holder, SERVICES)
        port = await standby.start(self.settings.listen, credentials, self._options())
        if port == 0:
            raise ConfigError(f"coordinator.listen: cannot bind {self.settings.listen}")
        log.info("standby serving health", address=self.settings.listen, port=port, health="NOT_SERVING",
                 replica=lease.holder)
        try:
            await asyncio.to_thread(lease.wait, self._resigned.is_set)
        finally:
            await standby.stop()
        if self.active:
            self._open()

    async def start(self) -> int:
        """Serve (a replica first stands by until it holds the lease); the bound port."""
        s = self.settings
        if s.insecure:
            log.warning("coordinator running with --insecure: no TLS, identities are not verified; "
                        "local development only")
        credentials = None if s.insecure else self._credentials()
        lease = self.lease
        if lease is not None and lease.token is None:
            await self._stand_by(lease, credentials)
            if not self.active:
                log.info("standby stopped before taking the lease", replica=lease.holder)
                return 0
        self.server = grpc.aio.server(interceptors=[DecodeGuard()], options=self._options())
        gate = Gate(self.auth, self.limiter)
        participants = ParticipantService(self.jobs, gate, self.notifier, s.upload_timeout_s, s.max_message_bytes)
        participant_pb2_grpc.add_ParticipantServiceServicer_to_server(participants, self.server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminService(self.jobs, gate, self.notifier, self.audit), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = (self.server.add_insecure_port(s.listen) if credentials is None
                     else self.server.add_secure_port(s.listen, credentials))
        if self.port == 0:
            raise ConfigError(f"coordinator.listen: cannot bind {s.listen}")
        await self.server.start()
        if s.metrics_listen:
            self.metrics_port = self.metrics.endpoint.serve(s.metrics_listen, "coordinator.metrics_listen")
            log.info("metrics serving", address=s.metrics_listen, port=self.metrics_port, path="/metrics")
        self._ticker = asyncio.create_task(self._tick_forever(participants))
        for service in SERVICES:
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("coordinator serving", address=s.listen, port=self.port, mtls=not s.insecure, health="SERVING",
                 state=str(Path(s.state_dir).resolve()), store=self.store.location)
        return self.port

    async def _tick_forever(self, participants: ParticipantService) -> None:
        """Every ``tick_s``: reread the CRL, let time pass for every job, log liveness, write checkpoints and wake
        the long-polls whose tasks changed; until cancelled, whatever fails."""
        while True:
            if self.lease is not None:
                self._step("lease", self.lease.renew)
            self._step("crl", self._refresh_crl)
            self._step("rounds", self.jobs.tick)
            self._step("liveness", lambda: self.liveness.sweep(self.jobs))
            self._step("checkpoints", lambda: self.checkpoints.sync(self.jobs))
            self._step("notify", lambda: self.jobs.each("notify", participants.announce))
            await asyncio.sleep(self.settings.tick_s)

    def _refresh_crl(self) -> None:
        with contextlib.suppress(Unauthenticated):  # an unusable CRL is logged once and refuses calls
            self.auth.refresh()

    def _step(self, name: str, step: Callable[[], None]) -> None:
        """Run one of the ticker's steps; a failure is logged (once while it repeats) and the ticker goes on.
        Per-job failures never get here: ``JobManager.each`` keeps them with their job."""
        try:
            step()
        except Deposed as exc:
            if not self.ended.is_set():
                log.error("deposed: another replica holds the lease; this one stops", reason=str(exc)[:MAX_ERROR])
            self.ended.set()
        except Exception as exc:  # any exception on purpose: the ticker is every job's clock
            reason = f"{type(exc).__name__}: {str(exc)[:MAX_ERROR]}"
            if self._tick_errors.get(name) != reason:
                log.error("tick step failed: tried again at the next tick", step=name, error=type(exc).__name__,
                          reason=str(exc)[:MAX_ERROR])
            self._tick_errors[name] = reason
        else:
            self._tick_errors.pop(name, None)

    async def drain(self) -> None:
        """First step of a graceful stop: report NOT_SERVING, answer pending long-polls, stop the ticker."""
        await self.health.enter_graceful_shutdown()
        log.info("coordinator draining", health="NOT_SERVING", grace_s=self.settings.shutdown_grace_s)
        self.notifier.close()
        self.worker.close()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let in-flight ones finish within ``grace`` seconds, write the last
        checkpoints and close the store."""
        if not self.active:  # stopped while standing by: nothing was opened
            self.store.close()
            return
        await self.drain()
        if self.server is not None:
            await self.server.stop(self.settings.shutdown_grace_s if grace is None else grace)
        self.checkpoints.sync(self.jobs)
        self.metrics.endpoint.close()
        if self.lease is not None and not self.ended.is_set():
            self._step("lease", self.lease.release)
        self.store.close()
        log.info("coordinator stopped")

    async def wait(self) -> None:
        if self.server is not None:
            await self.server.wait_for_termination()
