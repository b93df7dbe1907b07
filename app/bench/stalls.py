"""Stalls: one real coordinator process (mTLS) under upload streams that never finish and TLS connections that carry
no call, while an honest job completes a round.

Each stalled stream sends a valid header (an update for the open round of a job its identity was selected in) on
a TLS connection of its own, then nothing; each idle connection completes its handshake and makes no call; both
are spread over ``identities`` certificates.  Every identity may hold all its streams at once
(``max_concurrent_uploads`` is raised to the streams per identity), the worst case for the coordinator's memory.
Meanwhile the admin's job status is polled and three honest members complete a round.  Measured: the coordinator's
resident memory before, at its peak and after (streams cut off at ``upload_timeout_s``, idle connections closed at
``connection_idle_s``), the status calls' latency, how each stream ended, whether the honest round completed while
the streams stalled, and whether each stalling identity may upload again afterwards.

``StalledUploads`` and ``IdleConnections`` are also what ``tests/component/test_stalled_streams.py`` opens against
an in-process coordinator.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import psutil

from fedprompt.app.admin_client import AdminClient
from fedprompt.app.bench.load import VECTOR_SIZE, start_python
from fedprompt.app.bench.smoke import run_size
from fedprompt.app.demo import wait_for_port
from fedprompt.app.report import table, write_json
from fedprompt.config import JobConfig, JobSection, dump_toml
from fedprompt.crypto.pki import CertificateAuthority
from fedprompt.errors import ERRORS, ConfigError, FedPromptError
from fedprompt.participant.grpc_link import GrpcLink
from fedprompt.protocol import Payload, PayloadHeader
from fedprompt.v1 import participant_pb2, participant_pb2_grpc
from fedprompt.wire import serde
from fedprompt.wire.channel import ClientTls, open_channel
from fedprompt.wire.payload import FLOAT32, encode_vector

HONEST = ("participant:honest-0", "participant:honest-1", "participant:honest-2")
#: Each stream and idle connection on a TCP connection of its own (gRPC would otherwise share one per target).
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@dataclass(frozen=True)
class StallsSize:
    """How many stalled streams, stalling identities, idle connections and waves (``--stalled``, ``--identities``,
    ``--idle``, ``--waves``; each wave on a fresh round), and the coordinator's ``upload_timeout_s``: idle connections
    are closed after twice that, so the peak holds both the stalled streams and the idle connections."""

    stalled: int
    identities: int
    idle: int
    waves: int
    timeout_s: float


FULL = StallsSize(stalled=200, identities=20, idle=200, waves=2, timeout_s=10.0)
#: ``--smoke``: several streams per identity (so ``max_concurrent_uploads`` is raised as in the full run), two waves
#: as in the full run (the second, on a fresh round, must find every slot the first held freed), and a short
#: timeout, since every wave waits for its streams to be cut off and its connections to be closed.
SMOKE = StallsSize(stalled=6, identities=2, idle=4, waves=2, timeout_s=2.0)


@dataclass(frozen=True)
class Ended:
    """How one stalled stream ended: its status, the coordinator's reason, and when (from before it was opened)."""

    code: grpc.StatusCode
    details: str
    after_s: float


class StalledUploads:
    """Upload streams that each send one header on a TLS connection of their own, then nothing until ``close``."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.release = threading.Event()
        self.channels: list[grpc.Channel] = []
        self.calls: list[grpc.Future] = []
        self.ended: dict[int, float] = {}
        self.started = time.monotonic()

    def _messages(self, header: PayloadHeader) -> Iterator[participant_pb2.UploadUpdateRequest]:
        yield participant_pb2.UploadUpdateRequest(header=serde.header_to_pb(header))
        self.release.wait()

    def open(self, tls: ClientTls, header: PayloadHeader, count: int) -> None:
        for _ in range(count):
            channel = open_channel(self.target, tls, OWN_CONNECTION)
            call = participant_pb2_grpc.ParticipantServiceStub(channel).UploadUpdate.future(
                self._messages(header), timeout=3600)
            number = len(self.calls)
            call.add_done_callback(lambda _, n=number: self.ended.setdefault(n, time.monotonic()))
            self.channels.append(channel)
            self.calls.append(call)

    def ended_so_far(self) -> int:
        return len(self.ended)

    def outcomes(self, timeout_s: float) -> list[Ended]:
        """Every stream's end, waiting up to ``timeout_s`` for each (a stream accepted would end OK)."""
        out = []
        for number, call in enumerate(self.calls):
            error = call.exception(timeout=timeout_s)
            while number not in self.ended:  # the done callback runs on gRPC's thread, just after the call ends
                time.sleep(0.01)
            code, details = ((error.code(), error.details() or "") if isinstance(error, grpc.RpcError)
                             else (grpc.StatusCode.OK, ""))
            out.append(Ended(code, details, self.ended[number] - self.started))
        return out

    def close(self) -> None:
        self.release.set()
        for channel in self.channels:
            channel.close()


class IdleConnections:
    """TLS connections that complete their handshake and then make no call."""

    def __init__(self, target: str, tls: ClientTls, count: int, ready_s: float = 30.0) -> None:
        self.channels = [open_channel(target, tls, OWN_CONNECTION) for _ in range(count)]
        for ready in [grpc.channel_ready_future(channel) for channel in self.channels]:
            ready.result(timeout=ready_s)
        self.states: dict[int, list[grpc.ChannelConnectivity]] = {n: [] for n in range(count)}
        for number, channel in enumerate(self.channels):  # after connecting: a watcher first would delay it
            channel.subscribe(self.states[number].append)

    def closed(self) -> bool:
        """Whether every connection was seen ready and then closed (the channel left READY without a call)."""
        return all(grpc.ChannelConnectivity.READY in seen and seen[-1] is not grpc.ChannelConnectivity.READY
                   for seen in self.states.values())

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


def held_connections(process: psutil.Process, port: int) -> int:
    """TCP connections ``process`` holds established on its listening ``port``."""
    return sum(1 for c in process.net_connections("tcp")
               if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED)


class PeakRss(threading.Thread):
    """Samples a process's resident memory every 50 ms until ``stop``; ``peak`` is the largest seen, in bytes."""

    def __init__(self, process: psutil.Process) -> None:
        super().__init__(daemon=True)
        self.process = process
        self.peak = process.memory_info().rss
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def stop(self) -> int:
        self.done.set()
        self.join(5)
        return self.peak


def spread(total: int, parts: int) -> list[int]:
    """``total`` split over ``parts`` as evenly as integers allow."""
    return [total // parts + (k < total % parts) for k in range(parts)]


def update(job_id: str, round_: int, value: float) -> Payload:
    return Payload(job_id, round_, FLOAT32, VECTOR_SIZE, encode_vector(np.full(VECTOR_SIZE, value, np.float32)), 10)


class _Federation:
    """A throwaway CA and the certificates it issues, in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = CertificateAuthority.init(directory / "ca", "fedprompt stalls bench CA", days=2)
        self.coordinator = self.ca.issue("coordinator:bench", directory / "coordinator", ["127.0.0.1"], days=2)

    def tls(self, identity: str) -> ClientTls:
        key, cert = self.ca.issue(identity, self.dir / identity.replace(":", "-"), days=2)
        return ClientTls(str(self.ca.ca_cert_path), str(cert), str(key))

    def coordinator_args(self) -> list[str]:
        key, cert = self.coordinator
        return ["--ca-cert", str(self.ca.ca_cert_path), "--cert", str(cert), "--key", str(key), "--crl",
                str(self.ca.crl_path)]


def _started_job(admin: AdminClient, target: str, members: dict[str, ClientTls], name: str, rounds: int
                 ) -> tuple[str, dict[str, GrpcLink]]:
    """A job of ``members`` (all selected, all needed each round), joined over their own links and started."""
    job = JobConfig(job=JobSection(name=name, rounds=rounds, participants_per_round=len(members),
                                   min_participants=len(members), round_deadline_s=3600.0,
                                   allowed_participants=tuple(members)))
    job_id = admin.create_job(dump_toml(job))
    links = {who: GrpcLink(target, tls=tls, give_up_after_s=30) for who, tls in members.items()}
    for link in links.values():
        link.join(job_id, 30, 4, VECTOR_SIZE)
    links[next(iter(members))].upload(update(job_id, 0, 0.0))
    admin.start(job_id)
    return job_id, links


@dataclass
class _Bench:
    """A running coordinator process and the clients the waves use: its admin, the honest members and the stalling
    identities (members of a job of their own, each selected every round)."""

    process: psutil.Process
    port: int
    target: str
    admin: AdminClient
    honest_job: str
    honest: dict[str, GrpcLink]
    target_job: str
    stallers: dict[str, ClientTls]
    own: dict[str, GrpcLink]

    def open_round(self, job_id: str, round_: int) -> None:
        """Wait until ``round_`` of ``job_id`` takes updates (the next round opens at the coordinator's tick)."""
        deadline = time.monotonic() + 60
        while not any(r.round == round_ and r.state == "training" for r in self.admin.status(job_id).rounds):
            if time.monotonic() > deadline:
                raise FedPromptError(f"round {round_} of job {job_id} did not open")
            time.sleep(0.05)


@dataclass(frozen=True)
class _Wave:
    """What one wave measured (memory in bytes, times in seconds)."""

    rss_before: int
    rss_peak: int
    rss_after: int
    latencies: list[float]
    round_completed: bool
    round_completed_while_stalled: bool
    cut: list[float]  # when each stream cut off at the upload timeout ended, from before the streams opened
    refused: int
    slots_freed: bool
    connections_peak: int
    connections_after: int
    errors: list[str]


def _wave(bench: _Bench, round_: int, stalled: int, idle: int, timeout_s: float, idle_s: float) -> _Wave:
    """One wave: ``stalled`` streams with a header for ``round_`` and ``idle`` idle connections, the honest round
    ``round_`` meanwhile, then every stalling identity's real update, and the wait for every connection to close."""
    process, port, admin = bench.process, bench.port, bench.admin
    for job_id in (bench.honest_job, bench.target_job):
        bench.open_round(job_id, round_)
    rss_before = process.memory_info().rss
    peak = PeakRss(process)
    peak.start()
    stalls = StalledUploads(bench.target)
    groups: list[IdleConnections] = []
    honest_done: dict[str, float | str] = {}

    def honest_round() -> None:
        try:
            for value, link in enumerate(bench.honest.values()):
                link.upload(update(bench.honest_job, round_, float(value)))
            honest_done["at"] = time.monotonic()
        except ERRORS as exc:
            honest_done["error"] = str(exc)

    try:
        header = update(bench.target_job, round_, 1.0)
        counts = spread(stalled, len(bench.stallers))
        for tls, count in zip(bench.stallers.values(), counts, strict=True):
            stalls.open(tls, header.header(len(header.data)), count)
        counts = spread(idle, len(bench.stallers))
        groups = [IdleConnections(bench.target, tls, n) for tls, n in zip(bench.stallers.values(), counts, strict=True)
                  if n]
        connections_peak = held_connections(process, port)
        worker = threading.Thread(target=honest_round)
        worker.start()
        latencies = []
        while stalls.ended_so_far() < stalled and time.monotonic() - stalls.started < timeout_s + 60:
            began = time.perf_counter()
            admin.status(bench.honest_job)
            latencies.append(time.perf_counter() - began)
            connections_peak = max(connections_peak, held_connections(process, port))
            time.sleep(0.1)
        worker.join(60)
        outcomes = stalls.outcomes(60)
        round_completed = admin.status(bench.honest_job).global_version == round_
        refused_after: list[str] = []  # a stalling identity's real update, refused after its stalls were cut off
        for who, link in bench.own.items():
            try:
                link.upload(update(bench.target_job, round_, 2.0))
            except ERRORS as exc:
                refused_after.append(f"{who} could not upload after its stalls: {exc}")
        target_done = admin.status(bench.target_job).global_version == round_
        stalls.close()
        deadline = time.monotonic() + idle_s + 30
        while (after := held_connections(process, port)) and time.monotonic() < deadline:
            time.sleep(0.5)
        rss_after = process.memory_info().rss
    finally:
        rss_peak = peak.stop()
        stalls.close()
        for group in groups:
            group.close()
    cut = [o.after_s for o in outcomes if o.code is grpc.StatusCode.FAILED_PRECONDITION
           and o.details == f"upload not completed within {timeout_s:g} s"]
    completed_at = honest_done.get("at")
    errors = [*([f"honest round {round_}: {honest_done['error']}"] if "error" in honest_done else []),
              *([] if round_completed else [f"the honest round {round_} did not complete"]),
              *([] if len(cut) == stalled else [f"{stalled - len(cut)} streams did not end at the upload timeout"]),
              *refused_after, *([] if target_done else [f"the stalling identities' round {round_} did not complete"]),
              *([] if after == 0 else [f"{after} connections still open after the idle timeout"])]
    return _Wave(rss_before, rss_peak, rss_after, latencies, round_completed,
                 isinstance(completed_at, float) and bool(cut) and completed_at - stalls.started < min(cut), cut,
                 sum(o.code is grpc.StatusCode.RESOURCE_EXHAUSTED for o in outcomes),
                 not refused_after and target_done, connections_peak, after, errors)


def run_stalls(stalled: int, identities: int, idle: int, workdir: Path, timeout_s: float = FULL.timeout_s,
               waves: int = FULL.waves) -> dict[str, object]:
    """Run the benchmark in ``workdir`` and return its report.  Each wave repeats the attack on a fresh round: a
    later wave's peak near the first's shows the memory is reused, not leaked, whatever the allocator keeps."""
    if not 1 <= identities <= stalled or -(-stalled // identities) > 64 or idle < 0 or waves < 1:
        raise ConfigError("bench stalls: --identities must be in [1, --stalled], with at most 64 streams each "
                          "(the range of max_concurrent_uploads), --idle at least 0, --waves at least 1")
    slots = -(-stalled // identities)
    idle_s = 2 * timeout_s
    fed = _Federation(workdir / "pki")
    port_file = workdir / "port"
    coordinator = start_python(
        ["-m", "fedprompt", "--log-level", "error", "coordinator", "serve", *fed.coordinator_args(), "--listen",
         "127.0.0.1:0", "--state-dir", str(workdir / "state"), "--port-file", str(port_file),
         "--set", f"coordinator.upload_timeout_s={timeout_s}", "--set", f"coordinator.connection_idle_s={idle_s}",
         "--set", f"coordinator.max_concurrent_uploads={slots}"], workdir / "coordinator.log")
    links: list[GrpcLink] = []
    try:
        port = wait_for_port(port_file, coordinator)
        target = f"127.0.0.1:{port}"
        admin = AdminClient(target, fed.tls("admin:bench"))
        stallers = {f"participant:stall-{k}": fed.tls(f"participant:stall-{k}") for k in range(identities)}
        honest_job, honest = _started_job(admin, target, {who: fed.tls(who) for who in HONEST}, "honest", waves)
        target_job, own = _started_job(admin, target, stallers, "target", waves)
        links = [*honest.values(), *own.values()]
        bench = _Bench(psutil.Process(coordinator.pid), port, target, admin, honest_job, honest, target_job,
                       stallers, own)
        runs = [_wave(bench, round_, stalled, idle, timeout_s, idle_s) for round_ in range(1, waves + 1)]
        admin.close()
    finally:
        for link in links:
            link.close()
        coordinator.terminate()
        coordinator.wait(30)
    latencies = [t for run in runs for t in run.latencies]
    cut = [t for run in runs for t in run.cut]
    errors = [e for run in runs for e in run.errors]
    first, last = runs[0], runs[-1]
    return {
        "stalled_streams": stalled,
        "idle_connections": idle,
        "identities": identities,
        "waves": waves,
        "rss_mb_before": _mb(first.rss_before),
        "rss_mb_peak": _mb(max(run.rss_peak for run in runs)),
        "rss_mb_after": _mb(last.rss_after),
        "rss_kib_per_connection": round((first.rss_peak - first.rss_before) / 1024 / max(1, stalled + idle), 1),
        "status_p50_s": round(float(np.percentile(latencies, 50)), 4),
        "status_p95_s": round(float(np.percentile(latencies, 95)), 4),
        "status_max_s": round(max(latencies), 4),
        "status_calls": len(latencies),
        "round_completed": all(run.round_completed for run in runs),
        "round_completed_while_stalled": all(run.round_completed_while_stalled for run in runs),
        "streams_closed_by_timeout": len(cut),  # of stalled_streams in each of the waves
        "streams_refused": sum(run.refused for run in runs),
        "close_after_s_min": round(min(cut), 2) if cut else None,
        "close_after_s_max": round(max(cut), 2) if cut else None,
        "slots_freed": all(run.slots_freed for run in runs),
        "connections_peak": max(run.connections_peak for run in runs),
        "connections_after": last.connections_after,
        "per_wave": [{"rss_mb_before": _mb(run.rss_before), "rss_mb_peak": _mb(run.rss_peak),
                      "rss_mb_after": _mb(run.rss_after), "streams_closed_by_timeout": len(run.cut),
                      "status_max_s": round(max(run.latencies), 4)} for run in runs],
        "errors": len(errors),
        "settings": {"upload_timeout_s": timeout_s, "connection_idle_s": idle_s, "max_concurrent_uploads": slots,
                     "vector_size": VECTOR_SIZE, "honest_members": len(HONEST), "mtls": True,
                     "error_messages": errors},
    }


def _mb(value: int) -> float:
    return round(value / 2**20, 1)


def main(args: argparse.Namespace) -> int:
    size = run_size(args, FULL, SMOKE, "stalled", "identities", "idle", "waves")
    with tempfile.TemporaryDirectory(prefix="fedprompt-stalls-") as tmp:
        report = {**run_stalls(size.stalled, size.identities, size.idle, Path(tmp), size.timeout_s, size.waves),
                  "smoke": bool(args.smoke)}
    print(table(["stalled", "idle", "ids", "waves", "rss_before_mb", "rss_peak_mb", "rss_after_mb", "status_p50_s",
                 "status_max_s", "closed_by_timeout", "round_completed", "errors"],
                [[report["stalled_streams"], report["idle_connections"], report["identities"], report["waves"],
                  report["rss_mb_before"], report["rss_mb_peak"], report["rss_mb_after"], report["status_p50_s"],
                  report["status_max_s"], report["streams_closed_by_timeout"], report["round_completed"],
                  report["errors"]]]))
    write_json(report, args.report or "reports/bench-stalls.json")
    return 0 if report["errors"] == 0 else 1
