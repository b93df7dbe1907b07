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
from typing import Any

from fedprompt.errors import FedPromptError

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


# ---- coordinator -------------------------------------------------------------------------------------
def cmd_coordinator_serve(args: argparse.Namespace) -> int:
    from coordinator.server import CoordinatorServer
    from fedprompt.config import CoordinatorConfig, load_toml, parse_toml

    overrides = _overrides(args.set)
    for key in ("listen", "state_dir"):
        if getattr(args, key):
            overrides[f"coordinator.{key}"] = getattr(args, key)
    if args.insecure:
        overrides["coordinator.insecure"] = True
    settings = (load_toml(args.config, CoordinatorConfig, overrides) if args.config
                else parse_toml("", CoordinatorConfig, overrides=overrides)).coordinator

    async def main() -> None:
        server = CoordinatorServer(settings)
        port = await server.start()
        if args.port_file:
            Path(args.port_file).write_text(str(port), encoding="utf-8")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop()

    asyncio.run(main())
    return 0


# ---- participant -------------------------------------------------------------------------------------
def cmd_participant_run(args: argparse.Namespace) -> int:
    from fedprompt.config import ParticipantConfig, load_toml, parse_toml
    from participant.daemon import run_daemon

    overrides = _overrides(args.set)
    for key in ("coordinator", "job", "name", "data_dir", "state_dir", "threads", "model_service"):
        value = getattr(args, key)
        if value not in (None, ""):
            overrides[f"participant.{key}"] = value
    config = (load_toml(args.config, ParticipantConfig, overrides) if args.config
              else parse_toml("", ParticipantConfig, overrides=overrides))
    run_daemon(config.participant, progress=not args.no_progress)
    return 0


# ---- model service -----------------------------------------------------------------------------------
def cmd_model_serve(args: argparse.Namespace) -> int:
    import torch

    from fedprompt.config import ModelServiceConfig, load_toml, parse_toml
    from fedprompt.models import load_backbone
    from participant.model_server import ModelServer
    from participant.model_service import ModelHost

    overrides = _overrides(args.set)
    for key in ("listen", "model", "threads", "max_batch"):
        if getattr(args, key) not in (None, ""):
            overrides[f"model_service.{key}"] = getattr(args, key)
    if args.insecure:
        overrides["model_service.insecure"] = True
    settings = (load_toml(args.config, ModelServiceConfig, overrides) if args.config
                else parse_toml("", ModelServiceConfig, overrides=overrides)).model_service
    torch.set_num_threads(settings.threads)

    async def main() -> None:
        server = ModelServer(settings, ModelHost(load_backbone(settings.model, settings.kind), settings))
        port = await server.start()
        if args.port_file:
            Path(args.port_file).write_text(str(port), encoding="utf-8")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop()

    asyncio.run(main())
    return 0


# ---- admin -------------------------------------------------------------------------------------------
def _admin(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from fedprompt.admin_client import AdminClient

    return AdminClient(args.coordinator)


def _print_status(view: Any) -> None:
    from fedprompt.report import fmt, table

    print(f"job {view.job_id} ({view.name}): {view.state} — round {view.current_round}/{view.total_rounds}, "
          f"global version {view.global_version}, {view.participants} participants, aggregator {view.aggregator}")
    if view.reason:
        print(f"  {view.reason}")
    print(f"  initial accuracy: {fmt(view.initial_metrics.get('accuracy'))}")
    rows = [[r.round, r.attempt, r.state, len(r.selected), r.metric_reports, r.metrics.get("accuracy"),
             r.metrics.get("loss"), r.bytes_up, r.bytes_down] for r in view.rounds]
    if rows:
        print(table(["round", "attempt", "state", "selected", "reports", "accuracy", "loss", "bytes_up", "bytes_down"],
                    rows))


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
                _print_status(view)
        elif args.admin_cmd == "jobs":
            for view in client.jobs():
                print(f"{view.job_id}\t{view.state}\tround {view.current_round}/{view.total_rounds}")
        elif args.admin_cmd == "participants":
            from fedprompt.report import table

            people = client.participants(args.job or "")
            print(table(["participant", "job", "state", "train", "updates"],
                        [[p.participant_id, p.job_id, p.state, p.num_train_examples, p.updates_accepted]
                         for p in people]))
        elif args.admin_cmd == "export":
            out = client.export(args.job, Path(args.out), args.version)
            print(f"wrote {out}")
    finally:
        client.close()
    return 0


# ---- predict -----------------------------------------------------------------------------------------
def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np

    from fedprompt.admin_client import load_prompt
    from fedprompt.config import JobConfig, parse_toml
    from fedprompt.models import build_classifier, load_backbone

    vector, config_toml = load_prompt(Path(args.prompt))
    config = parse_toml(config_toml, JobConfig, str(args.prompt))
    texts = args.text or [line.strip() for line in sys.stdin if line.strip()]
    if config.blackbox.enabled:  # the export is a search state: score p0 + A z on a local model host
        from fedprompt.simulation import local_learner

        logits = local_learner(config, load_backbone(config.model.path, config.model.kind)).logits(vector, texts)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    else:
        model = build_classifier(config)
        model.set_vector(vector)
        probabilities = model.predict_proba(texts)
    for text, probs in zip(texts, probabilities):
        best = int(probs.argmax())
        print(json.dumps({"text": text, "label": config.task.label_names[best], "confidence": round(float(probs[best]), 4)}))
    return 0


# ---- data --------------------------------------------------------------------------------------------
def cmd_data_prepare(args: argparse.Namespace) -> int:
    from fedprompt.data.shards import PartitionSpec, prepare

    spec = PartitionSpec(args.partition, args.alpha, args.shots, args.quantity_alpha, args.label_alpha)
    dirs = prepare(args.dataset, Path(args.out), args.participants, spec, args.test_size, args.seed)
    meta = json.loads((Path(args.out) / "meta.json").read_text(encoding="utf-8"))
    for site in meta["sites"]:
        print(f"{Path(args.out) / site['dir']}: train {site['train']}, test {site['test']}, "
              f"unlabelled {site['unlabelled']}")
    print(f"{len(dirs)} site directories and test.jsonl written to {args.out}")
    return 0


# ---- simulate / demo / bench -------------------------------------------------------------------------
def cmd_simulate(args: argparse.Namespace) -> int:
    from fedprompt.config import JobConfig, load_toml, parse_toml
    from fedprompt.data.shards import PartitionSpec, load_split, split_sites
    from fedprompt.report import round_table, summary, write_json
    from fedprompt.simulation import simulate

    overrides = _overrides(args.set)
    config = load_toml(args.config, JobConfig, overrides) if args.config else parse_toml("", JobConfig, overrides=overrides)
    train, test, names = load_split(args.dataset, args.test_size, args.seed, config.task.label_names)
    spec = PartitionSpec(args.partition, args.alpha, args.shots, args.quantity_alpha, args.label_alpha)
    sites = split_sites(train, test, names, args.participants, spec, args.seed)
    report = simulate(config, sites)
    print(round_table(report))
    print(summary(report))
    if args.report:
        write_json(report, args.report)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from fedprompt.demo import DemoOptions, run_demo

    return run_demo(DemoOptions(participants=args.participants, rounds=args.rounds, backbone=args.backbone,
                                report=args.report, plot=args.plot, workdir=args.workdir, steps=args.steps,
                                test_size=args.test_size, seed=args.seed))


def cmd_bench(args: argparse.Namespace) -> int:
    from fedprompt.bench import run_bench

    return run_bench(args.name, args)


# ---- parser ------------------------------------------------------------------------------------------
def _add_partition_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--participants", type=int, default=3, help="number of sites (default 3)")
    p.add_argument("--partition", choices=["iid", "dirichlet", "fewshot"], default="iid",
                   help="how training data is split across sites (default iid)")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet label-skew concentration (default 0.5)")
    p.add_argument("--shots", type=int, default=32, help="few-shot: mean labelled examples per site (default 32)")
    p.add_argument("--quantity-alpha", type=float, default=1.0, help="few-shot: Dirichlet skew of label counts")
    p.add_argument("--label-alpha", type=float, default=1.0, help="few-shot: Dirichlet skew of label mix")
    p.add_argument("--test-size", type=int, default=1000, help="examples held out as the test split (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed for the split and partition (default 0)")


def build_parser() -> argparse.ArgumentParser:
    from fedprompt.bench import BENCHES

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
    serve.add_argument("--insecure", action="store_true", help="no TLS, identities unverified: local development only")
    serve.add_argument("--port-file", help="write the bound port to this file once listening")
    serve.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    serve.set_defaults(fn=cmd_coordinator_serve)

    part = sub.add_parser("participant", help="run a participant daemon").add_subparsers(dest="sub", required=True)
    run = part.add_parser("run", help="join a job and train on local data until it is done")
    run.add_argument("--config", help="participant TOML ([participant] table)")
    run.add_argument("--coordinator", help="coordinator host:port")
    run.add_argument("--job", help="job name or id to join")
    run.add_argument("--name", help="this site's identity (insecure mode only; certificates decide otherwise)")
    run.add_argument("--data-dir", dest="data_dir", help="directory with train.jsonl and test.jsonl")
    run.add_argument("--state-dir", dest="state_dir", help="directory for this site's state and update audit log")
    run.add_argument("--threads", type=int, help="torch threads for this process (default 1)")
    run.add_argument("--model-service", dest="model_service",
                     help="host:port of a query-only model service (black-box jobs)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    run.set_defaults(fn=cmd_participant_run)

    model = sub.add_parser("model", help="run a query-only model service").add_subparsers(dest="sub", required=True)
    mserve = model.add_parser("serve", help="host a frozen PLM that scores texts under a caller's soft prompt")
    mserve.add_argument("--config", help="model service TOML ([model_service] table)")
    mserve.add_argument("--model", help="backbone: builtin:minilm, builtin:smollm2 or a model directory")
    mserve.add_argument("--listen", help="host:port to bind (port 0 picks a free port)")
    mserve.add_argument("--threads", type=int, help="torch threads (default 1)")
    mserve.add_argument("--max-batch", dest="max_batch", type=int, help="most texts per query (default 64)")
    mserve.add_argument("--insecure", action="store_true", help="no TLS, callers unverified: local development only")
    mserve.add_argument("--port-file", help="write the bound port to this file once listening")
    mserve.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    mserve.set_defaults(fn=cmd_model_serve)

    admin = sub.add_parser("admin", help="manage jobs on a running coordinator")
    admin.add_argument("--coordinator", default=DEFAULT_COORDINATOR,
                       help="coordinator host:port (default $FEDPROMPT_COORDINATOR or 127.0.0.1:50051)")
    asub = admin.add_subparsers(dest="admin_cmd", required=True)
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
    export = asub.add_parser("export", help="save the global prompt to a file usable by `fedprompt predict`")
    export.add_argument("job")
    export.add_argument("--out", required=True)
    export.add_argument("--version", type=int, default=0, help="global version (default: latest)")
    admin.set_defaults(fn=cmd_admin)

    predict = sub.add_parser("predict", help="classify texts with an exported prompt")
    predict.add_argument("--prompt", required=True, help="file written by `fedprompt admin export`")
    predict.add_argument("text", nargs="*", help="texts to classify (default: one per line on stdin)")
    predict.set_defaults(fn=cmd_predict)

    data = sub.add_parser("data", help="prepare per-site data directories").add_subparsers(dest="sub", required=True)
    prep = data.add_parser("prepare", help="split a dataset into one directory per site")
    prep.add_argument("--dataset", default="rotten_tomatoes",
                      help="rotten_tomatoes, bbc_news, or a CSV/JSONL path with text,label columns")
    prep.add_argument("--out", required=True)
    _add_partition_args(prep)
    prep.set_defaults(fn=cmd_data_prepare)

    sim = sub.add_parser("simulate", help="run a job with many participants in one process (no sockets)")
    sim.add_argument("--config", help="job TOML (default: built-in defaults)")
    sim.add_argument("--dataset", default="rotten_tomatoes")
    sim.add_argument("--report", help="write the JSON report here")
    sim.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a job config key")
    _add_partition_args(sim)
    sim.set_defaults(fn=cmd_simulate)

    demo = sub.add_parser("demo", help="coordinator + participant processes over loopback gRPC, end to end")
    demo.add_argument("--participants", type=int, default=3)
    demo.add_argument("--rounds", type=int, default=5)
    demo.add_argument("--steps", type=int, default=30, help="local training steps per participant per round")
    demo.add_argument("--backbone", choices=["encoder", "causal"], default="encoder",
                      help="encoder = all-MiniLM-L6-v2 (default, fast); causal = SmolLM2-135M-Instruct")
    demo.add_argument("--test-size", type=int, default=1000)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--report", default="reports/demo.json", help="JSON report path (default reports/demo.json)")
    demo.add_argument("--plot", default="reports/demo.png", help="PNG plot path (default reports/demo.png)")
    demo.add_argument("--workdir", help="keep data, state and logs here (default: a temporary directory)")
    demo.set_defaults(fn=cmd_demo)

    bench = sub.add_parser("bench", help="benchmarks: print a table and write a JSON report")
    bench.add_argument("name", choices=sorted(BENCHES), help="which benchmark")
    bench.add_argument("--report", help="JSON report path (default reports/bench-NAME.json)")
    bench.add_argument("--seed", type=int, default=0)
    bench.set_defaults(fn=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    from fedprompt.logs import configure

    args = build_parser().parse_args(argv)
    configure(args.log_level, args.json_logs)
    try:
        return int(args.fn(args))
    except FedPromptError as exc:
        print(f"fedprompt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
