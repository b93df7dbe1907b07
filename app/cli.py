"""``fedprompt``: the one command-line entry point (coordinator, participant, model, admin, data, simulate, demo,
bench)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedprompt.app.bench import BENCHES
from fedprompt.errors import ERRORS, FedPromptError

if TYPE_CHECKING:
    from fedprompt.app.admin_client import AdminClient

DEFAULT_COORDINATOR = os.environ.get("FEDPROMPT_COORDINATOR", "127.0.0.1:50051")


def _overrides(pairs: list[str]) -> dict[str, Any]:
    """``--set a.b=value`` pairs; values parse as TOML scalars (numbers, booleans, quoted strings, lists)."""
    import tomllib

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise FedPromptError(f"--set {pair!r}: expected key=value")
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw
    return out


def _server_settings(args: argparse.Namespace, config_cls: type, section: str, keys: tuple[str, ...]) -> Any:
    """A server's settings: its TOML file (``--config``) or the defaults, then ``--set`` pairs, then the named
    command-line options that were given, then ``--insecure``; validated at load with the bad key named."""
    from fedprompt.config import load_toml, parse_toml

    overrides = _overrides(args.set)
    for key in keys:
        if getattr(args, key) not in (None, ""):
            overrides[f"{section}.{key}"] = getattr(args, key)
    if args.insecure:
        overrides[f"{section}.insecure"] = True
    config: Any = (load_toml(args.config, config_cls, overrides) if args.config
                   else parse_toml("", config_cls, overrides=overrides))
    return getattr(config, section)


def _serve_until_signalled(server: Any, port_file: str | None) -> None:
    """Start ``server`` (a coordinator or model service), write its port to ``port_file``, and stop it
    gracefully on SIGTERM or SIGINT."""
    async def main() -> None:
        port = await server.start()
        if port_file:
            Path(port_file).write_text(str(port), encoding="utf-8")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop()

    asyncio.run(main())


# ---- coordinator -------------------------------------------------------------------------------------
def cmd_coordinator_serve(args: argparse.Namespace) -> int:
    from fedprompt.config import CoordinatorConfig
    from fedprompt.coordinator.server import CoordinatorServer

    settings = _server_settings(args, CoordinatorConfig, "coordinator",
                                ("listen", "state_dir", "ca_cert", "cert", "key", "crl"))
    _serve_until_signalled(CoordinatorServer(settings), args.port_file)
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

    from fedprompt.wire.channel import ClientTls, open_channel

    tls = None if args.insecure else ClientTls(args.ca_cert, args.cert, args.key, args.server_name or "")
    channel = open_channel(args.target, tls)
    try:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=args.service),
                                                           timeout=args.timeout).status
    except grpc.RpcError as exc:
        print(f"{args.target}: {exc.code().name} ({exc.details()})", file=sys.stderr)
        return 1
    finally:
        channel.close()
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print(f"{args.target}: {name}")
    return 0 if status == health_pb2.HealthCheckResponse.SERVING else 1


# ---- participant -------------------------------------------------------------------------------------
def cmd_participant_run(args: argparse.Namespace) -> int:
    from fedprompt.config import ParticipantConfig, load_toml, parse_toml
    from fedprompt.participant.daemon import run_daemon

    overrides = _overrides(args.set)
    for key in ("coordinator", "job", "name", "data_dir", "state_dir", "threads", "ca_cert", "cert", "key",
                "server_name", "model_service"):
        value = getattr(args, key)
        if value not in (None, ""):
            overrides[f"participant.{key}"] = value
    if args.insecure:
        overrides["participant.insecure"] = True
    config = (load_toml(args.config, ParticipantConfig, overrides) if args.config
              else parse_toml("", ParticipantConfig, overrides=overrides))
    run_daemon(config.participant, progress=not args.no_progress)
    return 0


# ---- model service -----------------------------------------------------------------------------------
def cmd_model_serve(args: argparse.Namespace) -> int:
    from fedprompt.config import ModelServiceConfig
    from fedprompt.participant.model_server import ModelServer
    from fedprompt.participant.model_service import ModelHost

    settings = _server_settings(args, ModelServiceConfig, "model_service",
                                ("listen", "model", "threads", "max_batch", "ca_cert", "cert", "key"))
    _serve_until_signalled(ModelServer(settings, ModelHost.load(settings)), args.port_file)
    return 0


def cmd_model_export(args: argparse.Namespace) -> int:
    from fedprompt.participant.model_service import prepare_scorer

    print(prepare_scorer(args.model, args.kind))
    return 0


# ---- admin -------------------------------------------------------------------------------------------
def _admin(args: argparse.Namespace) -> AdminClient:
    from fedprompt.app.admin_client import AdminClient
    from fedprompt.wire.channel import ClientTls

    files = {"--ca-cert": args.ca_cert, "--cert": args.cert, "--key": args.key}
    if args.insecure:
        given = [flag for flag, value in {**files, "--server-name": args.server_name}.items() if value]
        if given:
            raise FedPromptError(f"--insecure cannot be combined with {', '.join(given)}")
        return AdminClient(args.coordinator)
    missing = [flag for flag, value in files.items() if not value]
    if missing:
        raise FedPromptError(f"admin calls use mTLS: give {', '.join(missing)} (or $FEDPROMPT_CA_CERT, "
                             "$FEDPROMPT_CERT, $FEDPROMPT_KEY); --insecure only for a local --insecure coordinator")
    return AdminClient(args.coordinator, ClientTls(args.ca_cert, args.cert, args.key, args.server_name or ""))


def _print_status(view: Any, people: list[Any]) -> None:
    from fedprompt.app.report import PRIVACY_HEADERS, PRIVACY_KEYS, fmt, table

    print(f"job {view.job_id} ({view.name}): {view.state} — round {view.current_round}/{view.total_rounds}, "
          f"global version {view.global_version}, {view.participants} participants, aggregator {view.aggregator}")
    if view.reason:
        print(f"  {view.reason}")
    print(f"  initial accuracy: {fmt(view.initial_metrics.get('accuracy'))}")
    if view.quarantined:
        print(f"  quarantined: {', '.join(view.quarantined)} (release with `fedprompt admin release`)")
    rows = [[r.round, r.attempt, r.state, len(r.selected), r.metric_reports, r.metrics.get("accuracy"),
             r.metrics.get("loss"), r.bytes_up, r.bytes_down, ",".join(r.rejected) or "-", *(r.metrics.get(k) for k in PRIVACY_KEYS)]
            for r in view.rounds]
    if rows:
        print(table(["round", "attempt", "state", "selected", "reports", "accuracy", "loss", "bytes_up", "bytes_down",
                     "rejected", *PRIVACY_HEADERS], rows))
    if people:
        print(table(["participant", "state", "updates", "eps_record", "reason"],
                    [[p.participant_id, p.state, p.updates_accepted, p.record_epsilon, p.reason] for p in people]))



def _print_flags(flags: Any) -> None:
    from fedprompt.app.report import table

    if not flags.flags:
        print("no robust-aggregation decisions (the job's aggregator judges no participant, or no round ended yet)")
    else:
        print(table(["round", "attempt", "participant", "decision", "score", "measure", "defence"],
                    [[f.round, f.attempt, f.participant_id, "accepted" if f.accepted else "REJECTED", f.score,
                      f.score_name, f.defence] for f in flags.flags]))
    streaks = {p: n for p, n in flags.streaks.items() if n}
    if streaks:
        print("consecutive rejections: " + ", ".join(f"{p}={n}" for p, n in streaks.items()))
    print(f"quarantined: {', '.join(flags.quarantined) or 'none'}")


def cmd_admin(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    client = _admin(args)
    try:
        if args.admin_cmd == "create":
            job_id = client.create_job(Path(args.config).read_text(encoding="utf-8"))
            print(job_id)
            if args.start:
                client.start(job_id)
        elif args.admin_cmd in ("start", "pause", "cancel"):
            print(getattr(client, args.admin_cmd)(args.job))
        elif args.admin_cmd == "status":
            view = client.status(args.job)
            if args.json:
                print(json.dumps(asdict(view), indent=2))
            else:
                _print_status(view, client.participants(view.job_id))
        elif args.admin_cmd == "jobs":
            for view in client.jobs():
                print(f"{view.job_id}\t{view.state}\tround {view.current_round}/{view.total_rounds}")
        elif args.admin_cmd == "participants":
            from fedprompt.app.report import table

            people = client.participants(args.job or "")
            print(table(["participant", "job", "state", "train", "updates", "eps_record", "reason"],
                        [[p.participant_id, p.job_id, p.state, p.num_train_examples, p.updates_accepted,
                          p.record_epsilon, p.reason] for p in people]))
        elif args.admin_cmd == "flags":
            flags = client.flags(args.job)
            if args.json:
                print(json.dumps(asdict(flags), indent=2))
            else:
                _print_flags(flags)
        elif args.admin_cmd == "release":
            print(client.release(args.job, args.participant))
        elif args.admin_cmd == "export":
            out = client.export(args.job, Path(args.out), args.version)
            print(f"wrote {out}")
    finally:
        client.close()
    return 0


# ---- certificate authority (local files; no coordinator needed) --------------------------------------
def cmd_ca(args: argparse.Namespace) -> int:
    from fedprompt.crypto.errors import PkiError
    from fedprompt.crypto.pki import CertificateAuthority, cert_info, cert_pem, load_cert, write_key_and_csr

    if args.ca_cmd == "csr":
        key, csr = write_key_and_csr(args.identity, Path(args.out), args.san)
        print(f"private key {key} (keep it on this host)\ncertificate signing request {csr} (send it to the CA admin)")
        return 0
    if args.ca_cmd == "init":
        ca = CertificateAuthority.init(Path(args.dir), args.name, args.days)
        print(f"CA certificate {ca.ca_cert_path} (give it to every party)\nrevocation list {ca.crl_path} "
              f"(the coordinator's --crl)\nCA key {Path(args.dir) / 'ca.key'} (keep it offline)")
        return 0
    ca = CertificateAuthority(Path(args.dir))
    if args.ca_cmd == "issue":
        key, cert = ca.issue(args.identity, Path(args.out), args.san, args.days)
        print(f"certificate {cert} (serial {cert_info(load_cert(cert)).serial:x})\nprivate key {key}")
    elif args.ca_cmd == "sign":
        try:
            csr_pem = Path(args.csr).read_bytes()
        except OSError as exc:
            raise PkiError(f"cannot read {args.csr}: {exc.strerror}") from exc
        signed = ca.sign(csr_pem, args.days)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(cert_pem(signed))
        info = cert_info(signed)
        print(f"certificate {out} for {info.identity} (serial {info.serial:x}, valid until "
              f"{info.not_after:%Y-%m-%d})")
    elif args.ca_cmd == "revoke":
        if args.serial:
            try:
                serials = [int(args.serial, 16)]
            except ValueError as exc:
                raise PkiError(f"--serial {args.serial[:40]!r} is not a hexadecimal serial number") from exc
        elif args.revoke_cert:
            serials = [cert_info(load_cert(Path(args.revoke_cert))).serial]
        else:
            serials = ca.serials_of(args.identity)
        if not serials:
            raise PkiError(f"this CA issued no certificate to {args.identity}")
        added = ca.revoke(serials)
        print(f"revoked {', '.join(f'{s:x}' for s in added) or 'nothing new'}; {ca.crl_path} updated "
              "(a coordinator reading another copy needs this file)")
    elif args.ca_cmd == "list":
        from fedprompt.app.report import table

        revoked = ca.revoked()
        print(table(["serial", "identity", "not_after", "revoked"],
                    [[row["serial"], row["identity"], row["not_after"][:19], int(row["serial"], 16) in revoked]
                     for row in ca.issued()]))
    return 0


# ---- predict -----------------------------------------------------------------------------------------
def cmd_predict(args: argparse.Namespace) -> int:

    from fedprompt.app.admin_client import load_prompt
    from fedprompt.config import JobConfig, parse_toml
    from fedprompt.models import build_classifier, load_backbone

    vector, config_toml = load_prompt(Path(args.prompt))
    config = parse_toml(config_toml, JobConfig, str(args.prompt))
    texts = args.text or [line.strip() for line in sys.stdin if line.strip()]
    if config.blackbox.enabled:  # the export is a search state: score p0 + A z on a local model host
        from fedprompt.participant.learners import local_learner

        learner = local_learner(config, load_backbone(config.model.path, config.model.kind))
        probabilities = learner.predict_proba(vector, texts)
    else:
        model = build_classifier(config)
        model.set_vector(vector)
        probabilities = model.predict_proba(texts)
    for text, probs in zip(texts, probabilities, strict=True):
        best = int(probs.argmax())
        print(json.dumps({"text": text, "label": config.task.label_names[best], "confidence": round(float(probs[best]), 4)}))
    return 0


# ---- data --------------------------------------------------------------------------------------------
def _plan_overrides(args: argparse.Namespace, prefix: str = "") -> dict[str, Any]:
    """The data-plan flags the user gave, as dotted ``DataPlan`` keys (unset flags leave the file's values)."""
    return {prefix + key: getattr(args, flag) for flag, key in PLAN_FLAGS.items() if getattr(args, flag) is not None}


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from fedprompt.config import from_mapping, set_dotted
    from fedprompt.data.shards import DataPlan, prepare

    mapping: dict[str, Any] = {}
    for dotted, value in _plan_overrides(args).items():
        set_dotted(mapping, dotted, value)
    dirs = prepare(from_mapping(DataPlan, mapping), Path(args.out))
    meta = json.loads((Path(args.out) / "meta.json").read_text(encoding="utf-8"))
    for site in meta["sites"]:
        print(f"{Path(args.out) / site['dir']}: train {site['train']}, test {site['test']}, "
              f"unlabelled {site['unlabelled']}")
    print(f"{len(dirs)} site directories and test.jsonl written to {args.out}")
    return 0


# ---- simulate / demo / bench -------------------------------------------------------------------------
def cmd_simulate(args: argparse.Namespace) -> int:
    from fedprompt.app.report import attack_summary, round_table, summary, write_json
    from fedprompt.app.simulate import load_simulation, parse_simulation, simulate

    overrides = {**_overrides(args.set), **_plan_overrides(args, "simulation.")}
    sim = load_simulation(args.config, overrides) if args.config else parse_simulation("", overrides=overrides)
    report = simulate(sim.job, sim.simulation.sites(sim.job.task.label_names), attack=sim.attack)
    print(round_table(report))
    print(summary(report))
    if "attack" in report:
        print(attack_summary(report))
    if args.report:
        write_json(report, args.report)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from fedprompt.app.demo import options_from_args, run_demo

    return run_demo(options_from_args(args))


def cmd_bench(args: argparse.Namespace) -> int:
    from fedprompt.app.bench import run_bench

    return run_bench(args.name, args)


# ---- parser ------------------------------------------------------------------------------------------
#: Data-plan flag (argparse dest) -> dotted ``DataPlan`` key; ``data prepare`` and ``simulate`` share it.
PLAN_FLAGS = {"dataset": "dataset", "participants": "participants", "partition": "partition.scheme",
              "alpha": "partition.alpha", "shots": "partition.shots", "quantity_alpha": "partition.quantity_alpha",
              "label_alpha": "partition.label_alpha", "test_size": "test_size", "seed": "seed"}


def _add_plan_args(p: argparse.ArgumentParser) -> None:
    """The data-plan flags; unset ones stay None so ``DataPlan``'s defaults (or a config file's values) stand."""
    from fedprompt.data.shards import SCHEMES, DataPlan

    plan = DataPlan()
    p.add_argument("--dataset", help=f"rotten_tomatoes, bbc_news, or a CSV/JSONL path with text,label columns "
                                     f"(default {plan.dataset})")
    p.add_argument("--participants", type=int, help=f"number of sites (default {plan.participants})")
    p.add_argument("--partition", choices=SCHEMES,
                   help=f"how training data is split across sites (default {plan.partition.scheme})")
    p.add_argument("--alpha", type=float, help=f"Dirichlet label-skew concentration (default {plan.partition.alpha})")
    p.add_argument("--shots", type=int,
                   help=f"few-shot: mean labelled examples per site (default {plan.partition.shots})")
    p.add_argument("--quantity-alpha", type=float,
                   help=f"few-shot: Dirichlet skew of label counts (default {plan.partition.quantity_alpha})")
    p.add_argument("--label-alpha", type=float,
                   help=f"few-shot: Dirichlet skew of label mix (default {plan.partition.label_alpha})")
    p.add_argument("--test-size", type=int,
                   help=f"examples held out as the test split (default {plan.test_size})")
    p.add_argument("--seed", type=int, help=f"seed for the split and partition (default {plan.seed})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedprompt",
        description="Federated soft-prompt tuning of a frozen language model: institutions tune a shared prompt "
                    "without pooling data; only prompt-sized vectors cross the network.",
    )
    parser.add_argument("--log-level", default="info", help="debug, info, warning or error (default info)")
    parser.add_argument("--json-logs", action="store_true", help="structured JSON log lines on stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    coord = sub.add_parser("coordinator", help="run the coordinator service").add_subparsers(dest="sub", required=True)
    serve = coord.add_parser("serve", help="serve the participant and admin gRPC services")
    serve.add_argument("--config", help="coordinator TOML ([coordinator] table)")
    serve.add_argument("--listen", help="host:port to bind (port 0 picks a free port)")
    serve.add_argument("--state-dir", dest="state_dir", help="directory for the SQLite state file")
    serve.add_argument("--insecure", action="store_true",
                       help="no TLS, identities unverified: local development only (excludes the certificate flags)")
    serve.add_argument("--ca-cert", dest="ca_cert", help="federation CA certificate: clients must present one it signed")
    serve.add_argument("--cert", help="the coordinator's certificate (with the SANs it is reached by)")
    serve.add_argument("--key", help="the coordinator's private key")
    serve.add_argument("--crl", help="the CA's revocation list; re-read whenever the file changes")
    serve.add_argument("--port-file", help="write the bound port to this file once listening")
    serve.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    serve.set_defaults(fn=cmd_coordinator_serve)
    backup = coord.add_parser("backup", help="consistent copy of the coordinator's state while it runs")
    backup.add_argument("--state-dir", dest="state_dir", required=True, help="the coordinator's state directory")
    backup.add_argument("--out", required=True, help="new SQLite file to write")
    backup.set_defaults(fn=cmd_coordinator_backup)
    health = coord.add_parser("health", help="check the gRPC health service (exit 0 = SERVING); for probes")
    health.add_argument("--target", default="127.0.0.1:50051", help="coordinator host:port")
    health.add_argument("--service", default="", help="service name to check (default: the whole server)")
    health.add_argument("--ca-cert", dest="ca_cert", default="", help="federation CA certificate")
    health.add_argument("--cert", default="", help="a client certificate signed by the federation CA (e.g. admin:probe)")
    health.add_argument("--key", default="", help="its private key")
    health.add_argument("--server-name", dest="server_name", help="verify the server certificate for this name")
    health.add_argument("--insecure", action="store_true", help="plaintext, for an --insecure coordinator")
    health.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    health.set_defaults(fn=cmd_coordinator_health)

    part = sub.add_parser("participant", help="run a participant daemon").add_subparsers(dest="sub", required=True)
    run = part.add_parser("run", help="join a job and train on local data until it is done")
    run.add_argument("--config", help="participant TOML ([participant] table)")
    run.add_argument("--coordinator", help="coordinator host:port")
    run.add_argument("--job", help="job name or id to join")
    run.add_argument("--name", help="this site's identity (insecure mode only; certificates decide otherwise)")
    run.add_argument("--data-dir", dest="data_dir", help="directory with train.jsonl and test.jsonl")
    run.add_argument("--state-dir", dest="state_dir", help="directory for this site's state and update audit log")
    run.add_argument("--threads", type=int, help="torch threads for this process (default 1)")
    run.add_argument("--ca-cert", dest="ca_cert", help="federation CA certificate (verifies the coordinator)")
    run.add_argument("--cert", help="this site's certificate (its name is the site's identity)")
    run.add_argument("--key", help="this site's private key")
    run.add_argument("--server-name", dest="server_name", help="verify the coordinator's certificate for this name")
    run.add_argument("--insecure", action="store_true", help="plaintext, identity from --name: local development only")
    run.add_argument("--model-service", dest="model_service",
                     help="host:port of a query-only model service (black-box jobs)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    run.set_defaults(fn=cmd_participant_run)

    model = sub.add_parser("model", help="run a query-only model service").add_subparsers(dest="sub", required=True)
    mserve = model.add_parser("serve", help="host a frozen PLM that scores texts under a caller's soft prompt",
                              description="Serve a frozen PLM's scoring graph with ONNX Runtime (no torch in this "
                                          "process); the graph is exported once on first use, see `model export`.")
    mserve.add_argument("--config", help="model service TOML ([model_service] table)")
    mserve.add_argument("--model", help="backbone: builtin:minilm, builtin:smollm2 or a model directory")
    mserve.add_argument("--listen", help="host:port to bind (port 0 picks a free port)")
    mserve.add_argument("--threads", type=int, help="inference threads (default 1)")
    mserve.add_argument("--max-batch", dest="max_batch", type=int, help="most texts per query (default 64)")
    mserve.add_argument("--ca-cert", dest="ca_cert", help="CA whose certificates callers must present (mTLS)")
    mserve.add_argument("--cert", help="this service's certificate (its SANs must name the address callers use)")
    mserve.add_argument("--key", help="this service's private key")
    mserve.add_argument("--insecure", action="store_true", help="no TLS, callers unverified: local development only")
    mserve.add_argument("--port-file", help="write the bound port to this file once listening")
    mserve.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    mserve.set_defaults(fn=cmd_model_serve)
    mexport = model.add_parser("export", help="export a backbone's scoring graph for `model serve` ahead of time",
                               description="Export the backbone's scoring graph to ONNX (checked against torch) "
                                           "into the cache ($FEDPROMPT_CACHE/scorers) and print its directory. "
                                           "`model serve` does this on first use; run it ahead to start fast.")
    mexport.add_argument("--model", default="builtin:minilm", help="backbone: builtin:minilm, builtin:smollm2 or a "
                                                                    "model directory (default builtin:minilm)")
    mexport.add_argument("--kind", default="auto", choices=["auto", "encoder", "causal"],
                         help="how labels are scored (default: detected from the model)")
    mexport.set_defaults(fn=cmd_model_export)

    admin = sub.add_parser("admin", help="manage jobs on a running coordinator")
    admin.add_argument("--coordinator", default=DEFAULT_COORDINATOR,
                       help="coordinator host:port (default $FEDPROMPT_COORDINATOR or 127.0.0.1:50051)")
    admin.add_argument("--ca-cert", dest="ca_cert", default=os.environ.get("FEDPROMPT_CA_CERT"),
                       help="federation CA certificate (default $FEDPROMPT_CA_CERT)")
    admin.add_argument("--cert", default=os.environ.get("FEDPROMPT_CERT"),
                       help="your admin certificate (default $FEDPROMPT_CERT)")
    admin.add_argument("--key", default=os.environ.get("FEDPROMPT_KEY"), help="your private key (default $FEDPROMPT_KEY)")
    admin.add_argument("--server-name", dest="server_name", help="verify the coordinator's certificate for this name")
    admin.add_argument("--insecure", action="store_true", help="plaintext to an --insecure coordinator (development)")
    asub = admin.add_subparsers(dest="admin_cmd", required=True)
    ca = asub.add_parser("ca", help="the federation's certificate authority (works on local files)")
    casub = ca.add_subparsers(dest="ca_cmd", required=True)
    init = casub.add_parser("init", help="create a CA: ca.key, ca.crt, an empty crl.pem")
    init.add_argument("--dir", required=True, help="CA directory (keep ca.key offline)")
    init.add_argument("--name", default="fedprompt federation CA")
    init.add_argument("--days", type=int, default=3650)
    issue = casub.add_parser("issue", help="make a key and a certificate here (coordinator, admins; sites: use csr)")
    issue.add_argument("--dir", required=True, help="CA directory")
    csr = casub.add_parser("csr", help="at a site: make a private key and a signing request for the CA admin")
    for p in (issue, csr):
        p.add_argument("--identity", required=True,
                       help="ROLE:NAME, e.g. participant:hospital-a, admin:alice, coordinator:main")
        p.add_argument("--san", action="append", default=[],
                       help="coordinator only: a DNS name or IP address it is reached by (repeat)")
        p.add_argument("--out", required=True, help="directory for the key (mode 0600) and certificate / CSR")
    sign = casub.add_parser("sign", help="check and sign a CSR")
    sign.add_argument("--dir", required=True, help="CA directory")
    sign.add_argument("--csr", required=True)
    sign.add_argument("--out", required=True, help="certificate file to write")
    for p in (issue, sign):
        p.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    revoke = casub.add_parser("revoke", help="revoke certificates; the coordinator refuses them on their next call")
    revoke.add_argument("--dir", required=True, help="CA directory")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--serial", help="serial number (hex, as printed by issue/sign/list)")
    which.add_argument("--cert", dest="revoke_cert", help="a certificate file")
    which.add_argument("--identity", help="every certificate issued to this identity")
    casub.add_parser("list", help="certificates issued and their revocation state").add_argument(
        "--dir", required=True, help="CA directory")
    ca.set_defaults(fn=cmd_ca)
    create = asub.add_parser("create", help="create a job from a job TOML; prints its id")
    create.add_argument("config")
    create.add_argument("--start", action="store_true", help="start it right away")
    for name, text in (("start", "start or resume a job"), ("pause", "pause after the current round"),
                       ("cancel", "cancel a job")):
        asub.add_parser(name, help=text).add_argument("job")
    status = asub.add_parser("status", help="a job's rounds, participants and metrics")
    status.add_argument("job")
    status.add_argument("--json", action="store_true")
    asub.add_parser("jobs", help="list jobs")
    people = asub.add_parser("participants", help="list participants (of one job or all)")
    people.add_argument("job", nargs="?")
    flags = asub.add_parser("flags", help="robust aggregation: each round's accepted/rejected updates and scores, "
                                          "rejection streaks, quarantined participants")
    flags.add_argument("job")
    flags.add_argument("--json", action="store_true")
    release = asub.add_parser("release", help="lift a participant's quarantine so it can be selected again")
    release.add_argument("job")
    release.add_argument("participant")
    export = asub.add_parser("export", help="save the global prompt to a file usable by `fedprompt predict`")
    export.add_argument("job")
    export.add_argument("--out", required=True)
    export.add_argument("--version", type=int, help="global version, 0 = the initial prompt (default: the latest)")
    admin.set_defaults(fn=cmd_admin)

    predict = sub.add_parser("predict", help="classify texts with an exported prompt")
    predict.add_argument("--prompt", required=True, help="file written by `fedprompt admin export`")
    predict.add_argument("text", nargs="*", help="texts to classify (default: one per line on stdin)")
    predict.set_defaults(fn=cmd_predict)

    data = sub.add_parser("data", help="prepare per-site data directories").add_subparsers(dest="sub", required=True)
    prep = data.add_parser("prepare", help="split a dataset into one directory per site")
    prep.add_argument("--out", required=True, help="directory to write participant-K/ site directories into")
    _add_plan_args(prep)
    prep.set_defaults(fn=cmd_data_prepare)

    sim = sub.add_parser("simulate", help="run a job with many participants in one process (no sockets)",
                         description="A simulation file is a job TOML plus optional [simulation] (data, sites, "
                                     "partition) and [attack] (attack simulator) tables; flags override them.")
    sim.add_argument("--config", help="simulation TOML, e.g. examples/backdoor.toml (default: built-in defaults)")
    sim.add_argument("--report", help="write the JSON report here")
    sim.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a key, e.g. job.aggregator=\"multi_krum\" or attack.scale=1")
    _add_plan_args(sim)
    sim.set_defaults(fn=cmd_simulate)

    demo = sub.add_parser("demo", help="coordinator + participant processes over loopback gRPC, end to end")
    demo.add_argument("--participants", type=int, default=3)
    demo.add_argument("--rounds", type=int, default=5)
    demo.add_argument("--steps", type=int,
                      help="local training steps per participant per round (default 4 with DP, 30 without; causal 30)")
    demo.add_argument("--backbone", choices=["encoder", "causal"], default="encoder",
                      help="encoder = all-MiniLM-L6-v2 (default, fast); causal = SmolLM2-135M-Instruct")
    demo.add_argument("--test-size", type=int, default=1000)
    demo.add_argument("--seed", type=int, default=0,
                      help="seed for the split, partition, initial prompt and training (default 0)")
    demo.add_argument("--dp", action=argparse.BooleanOptionalAction, default=True,
                      help="record-level DP-SGD at --epsilon (default on; --no-dp trains without it, ~3x faster)")
    demo.add_argument("--epsilon", type=float, default=8.0,
                      help="record-level privacy budget per site for the whole job (default 8)")
    demo.add_argument("--batch-size", type=int,
                      help="local batch, with DP the expected Poisson batch (default 256 with DP, 16 without; "
                           "causal 8). DP noise is added once per step, so a large batch keeps accuracy: see README, "
                           "differential privacy")
    demo.add_argument("--lr", type=float, help="local learning rate (default 0.1 with DP, 0.01 without; causal 0.003)")
    demo.add_argument("--report", default="reports/demo.json", help="JSON report path (default reports/demo.json)")
    demo.add_argument("--plot", default="reports/demo.png", help="PNG plot path (default reports/demo.png)")
    demo.add_argument("--workdir", help="keep data, state and logs here (default: a temporary directory)")
    demo.add_argument("--insecure", action="store_true",
                      help="plaintext, unverified identities (default: mTLS with a throwaway CA)")
    demo.add_argument("--no-he", action="store_true",
                      help="aggregate in plaintext (default: CKKS-encrypted aggregation, coordinator sees no update)")
    demo.set_defaults(fn=cmd_demo)

    bench = sub.add_parser("bench", help="benchmarks: print a table and write a JSON report")
    bench.add_argument("name", choices=sorted(BENCHES), help="which benchmark")
    bench.add_argument("--report", help="JSON report path (default reports/bench-NAME.json)")
    bench.add_argument("--seed", type=int, default=0,
                       help="seed for splits, partitions, prompts and training (fewshot: the first seed) (default 0)")
    bench.add_argument("--seeds", type=int, default=3,
                       help="fewshot: repeat on seeds SEED..SEED+N-1, report mean and sd (default 3; one seed of both "
                            "datasets takes ~100 min on 2 cores)")
    bench.add_argument("--dataset", action="append", metavar="NAME",
                       help="fewshot: only this dataset, rotten_tomatoes or bbc_news; repeatable (default both)")
    bench.add_argument("--shots", type=int, default=32,
                       help="fewshot: mean labelled examples per site, the rest of its share unlabelled (default 32)")
    bench.add_argument("--participants", type=int, help="load: concurrent participants (default 200)")
    bench.add_argument("--rounds", type=int, help="load: rounds (default 5)")
    bench.add_argument("--clients", type=int, help="load: client processes simulating them (default 4)")
    bench.set_defaults(fn=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    from fedprompt.logs import configure

    args = build_parser().parse_args(argv)
    configure(args.log_level, args.json_logs)
    try:
        return int(args.fn(args))
    except ERRORS as exc:
        print(f"fedprompt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
