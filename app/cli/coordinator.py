"""``fedprompt coordinator``: serve the coordinator, back up its state, probe its health."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fedprompt.app.cli.common import (
    DEFAULT_COORDINATOR,
    add_command,
    add_connection_flags,
    client_tls,
    coordinator_default,
    serve_until_signalled,
    server_settings,
)
from fedprompt.errors import FedPromptError

if TYPE_CHECKING:
    from fedprompt.app.cli.common import Subparsers


def cmd_coordinator_serve(args: argparse.Namespace) -> int:
    from fedprompt.config import CoordinatorConfig
    from fedprompt.coordinator.server import CoordinatorServer

    settings = server_settings(args, CoordinatorConfig, "coordinator",
                               ("listen", "state_dir", "store", "lease_ttl_s", "replica", "ca_cert", "cert", "key", "crl",
                                "metrics_listen"))
    server = CoordinatorServer(settings)
    serve_until_signalled(server, args.port_file)
    if server.ended.is_set():
        raise FedPromptError(f"replica {server.lease.holder if server.lease else ''}: deposed: another replica took "
                             "the lease over; start this one again to stand by")
    return 0


def cmd_coordinator_backup(args: argparse.Namespace) -> int:
    from fedprompt.coordinator.store import Store

    source = Path(args.state_dir) / "coordinator.sqlite"
    if not source.exists():
        raise FedPromptError(f"--state-dir {args.state_dir}: no coordinator.sqlite there")
    out = Path(args.out)
    if out.exists():
        raise FedPromptError(f"--out {out}: already exists; choose a new file")
    out.parent.mkdir(parents=True, exist_ok=True)
    store = Store(source)
    try:
        store.backup(out)
    finally:
        store.close()
    print(f"wrote {out} (a consistent copy; restore by placing it as coordinator.sqlite in an empty state dir)")
    return 0


def cmd_coordinator_health(args: argparse.Namespace) -> int:
    """Exit 0 when the coordinator's gRPC health service answers SERVING (for probes and scripts)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from fedprompt.wire.channel import open_channel

    channel = open_channel(args.coordinator, client_tls(args))
    try:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=args.service),
                                                           timeout=args.timeout).status
    except grpc.RpcError as exc:
        print(f"{args.coordinator}: {exc.code().name} ({exc.details()})", file=sys.stderr)
        return 1
    finally:
        channel.close()
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print(f"{args.coordinator}: {name}")
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


def register(sub: Subparsers) -> None:
    """``coordinator serve``, ``coordinator backup`` and ``coordinator health``."""
    coord = add_command(sub, "coordinator", "run the coordinator service",
                         "fedprompt coordinator serve --insecure --listen 127.0.0.1:50051 --state-dir coord-state"
                         ).add_subparsers(dest="sub", required=True)
    serve = add_command(coord, "serve", "serve the participant and admin gRPC services",
                        "fedprompt coordinator serve --ca-cert ca/ca.crt --cert coord/coordinator-main.crt "
                        "--key coord/coordinator-main.key --crl ca/crl.pem --state-dir coord-state")
    serve.add_argument("--config", help="coordinator TOML ([coordinator] table)")
    serve.add_argument("--listen", help="host:port to bind (port 0 picks a free port)")
    serve.add_argument("--state-dir", dest="state_dir", help="directory for the SQLite state file and checkpoints")
    serve.add_argument("--store", help="where the state is kept: sqlite:///PATH or postgresql://USER@HOST:PORT/DB "
                                       "(default: coordinator.sqlite in --state-dir)")
    serve.add_argument("--insecure", action="store_true",
                       help="no TLS, identities unverified: local development only (excludes the certificate flags)")
    serve.add_argument("--ca-cert", dest="ca_cert", help="federation CA certificate: clients must present one it signed")
    serve.add_argument("--cert", help="the coordinator's certificate (with the SANs it is reached by)")
    serve.add_argument("--key", help="the coordinator's private key")
    serve.add_argument("--crl", help="the CA's revocation list; re-read whenever the file changes")
    serve.add_argument("--lease-ttl-s", dest="lease_ttl_s", type=float,
                       help="run as one of several replicas on one store: the active one holds a lease this many "
                            "seconds, renewed; the others stand by and take over when it lapses (default 0: none)")
    serve.add_argument("--replica", help="this replica's name in the lease and logs (default host:pid)")
    serve.add_argument("--port-file", help="write the bound port to this file once listening")
    serve.add_argument("--metrics-listen", dest="metrics_listen",
                       help="host:port of a plain-HTTP Prometheus endpoint, /metrics (default: none)")
    serve.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    serve.set_defaults(fn=cmd_coordinator_serve)
    backup = add_command(coord, "backup", "consistent copy of the coordinator's state while it runs",
                         "fedprompt coordinator backup --state-dir coord-state --out backups/coordinator.sqlite")
    backup.add_argument("--state-dir", dest="state_dir", required=True, help="the coordinator's state directory")
    backup.add_argument("--out", required=True, help="new SQLite file to write")
    backup.set_defaults(fn=cmd_coordinator_backup)
    health = add_command(coord, "health", "check the gRPC health service (exit 0 = SERVING); for probes",
                         "fedprompt coordinator health --ca-cert tls/ca.crt --cert tls/probe-k8s.crt "
                         "--key tls/probe-k8s.key --server-name coord.example.org")
    add_connection_flags(health, {"coordinator": coordinator_default() or DEFAULT_COORDINATOR}, "probe")
    health.add_argument("--service", default="", help="service name to check (default: the whole server)")
    health.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    health.set_defaults(fn=cmd_coordinator_health)
