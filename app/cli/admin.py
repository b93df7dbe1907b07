"""``fedprompt admin``: manage jobs on a running coordinator over its admin service (``admin ca`` is in
:mod:`fedprompt.app.cli.ca`)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedprompt.app.adapter_export import FORMATS
from fedprompt.app.cli import ca
from fedprompt.app.cli.common import (
    DEFAULT_COORDINATOR,
    add_command,
    add_connection_flags,
    add_format_flag,
    client_tls,
    coordinator_default,
    print_json,
)

if TYPE_CHECKING:
    from fedprompt.app.admin_client import AdminClient
    from fedprompt.app.cli.common import Subparsers

#: What a job argument takes.
JOB_HELP = "the job's id, or its name if no other job has it"


def _count(text: str) -> int:
    """A ``--limit``: a whole number, 0 or more (the wire field is unsigned)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text[:40]!r}")
    return value


def _admin(args: argparse.Namespace) -> AdminClient:
    from fedprompt.app.admin_client import AdminClient

    return AdminClient(args.coordinator, client_tls(args, " (or $FEDPROMPT_CA_CERT, $FEDPROMPT_CERT, $FEDPROMPT_KEY)"))


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


def _print_jobs(views: list[Any]) -> None:
    from fedprompt.app.report import table

    if not views:
        print("no jobs (create one with `fedprompt admin create JOB.toml`)")
        return
    print(table(["job", "name", "state", "round", "participants", "aggregator"],
                [[v.job_id, v.name, v.state, f"{v.current_round}/{v.total_rounds}", v.participants, v.aggregator]
                 for v in views]))


def _print_participants(people: list[Any], job: str | None) -> None:
    from fedprompt.app.report import table

    if not people:
        print(f"no participants have joined {'job ' + job if job else 'any job'}")
        return
    print(table(["participant", "job", "state", "train", "updates", "eps_record", "reason"],
                [[p.participant_id, p.job_id, p.state, p.num_train_examples, p.updates_accepted, p.record_epsilon,
                  p.reason] for p in people]))


def _print_audit(entries: list[Any]) -> None:
    import json
    from datetime import UTC, datetime

    from fedprompt.app.report import table

    if not entries:
        print("no admin actions recorded")
        return
    print(table(["seq", "time (UTC)", "identity", "action", "job", "outcome", "arguments"],
                [[e.seq, datetime.fromtimestamp(e.at, UTC).strftime("%Y-%m-%d %H:%M:%S"), e.identity, e.action,
                  e.job_id or "-", e.outcome, json.dumps(e.arguments, sort_keys=True)[:80]] for e in entries]))


def _show(args: argparse.Namespace, found: Any, as_table: Callable[[Any], None]) -> None:
    """A listing as ``--format`` asks: JSON for scripts, else ``as_table``."""
    if args.format == "json":
        print_json(found)
    else:
        as_table(found)


def _export_peft(client: AdminClient, args: argparse.Namespace) -> Path:
    """A plaintext job's global as a peft adapter directory with its model card (``fedprompt.app.adapter_export``)."""
    from fedprompt.app.adapter_export import CardFacts, export_peft
    from fedprompt.app.cli import installed_version
    from fedprompt.app.report import privacy_spent

    vector, config_toml, version = client.fetch_global(args.job, args.version)
    view = client.status(args.job)
    facts = CardFacts(job_id=view.job_id, version=version, source="the coordinator (`fedprompt admin export`)",
                      rounds_completed=len({r.round for r in view.rounds if r.state == "done"}),
                      participants=view.participants, privacy=privacy_spent(view))
    return export_peft(vector, config_toml, Path(args.out), facts, installed_version())


def cmd_admin(args: argparse.Namespace) -> int:
    from fedprompt.config import read_toml_text
    from fedprompt.files import writable

    # local files first: a missing or binary job file, or an --out that cannot be written, is refused by name
    # before any call is made
    config_toml = read_toml_text(args.config, "job config") if args.admin_cmd == "create" else ""
    if args.admin_cmd == "export":
        from fedprompt.app.adapter_export import out_directory

        if args.format == "peft":
            out_directory(args.out)
        else:
            writable(args.out, "--out")
    client = _admin(args)
    try:
        if args.admin_cmd == "create":
            job_id = client.create_job(config_toml)
            print(job_id)
            if args.start:
                client.start(job_id)
        elif args.admin_cmd in ("start", "pause", "cancel"):
            print(getattr(client, args.admin_cmd)(args.job))
        elif args.admin_cmd == "status":
            _show(args, client.status(args.job), lambda view: _print_status(view, client.participants(view.job_id)))
        elif args.admin_cmd == "jobs":
            _show(args, client.jobs(), _print_jobs)
        elif args.admin_cmd == "participants":
            _show(args, client.participants(args.job or ""), lambda people: _print_participants(people, args.job))
        elif args.admin_cmd == "flags":
            _show(args, client.flags(args.job), _print_flags)
        elif args.admin_cmd == "audit":
            _show(args, client.audit(args.job or "", args.limit), _print_audit)
        elif args.admin_cmd == "release":
            print(client.release(args.job, args.participant))
        elif args.admin_cmd == "export":
            out = (_export_peft(client, args) if args.format == "peft"
                   else client.export(args.job, Path(args.out), args.version))
            print(f"wrote {out}")
    finally:
        client.close()
    return 0


def register(sub: Subparsers) -> None:
    """``admin`` with its connection options, ``admin ca ...``, then the job commands (create ... export)."""
    admin = add_command(sub, "admin", "manage jobs on a running coordinator",
                         "fedprompt admin --ca-cert ca/ca.crt --cert alice/admin-alice.crt --key alice/admin-alice.key "
                         "status rt-sentiment")
    add_connection_flags(admin, {"coordinator": coordinator_default() or DEFAULT_COORDINATOR,
                                 "ca_cert": os.environ.get("FEDPROMPT_CA_CERT"),
                                 "cert": os.environ.get("FEDPROMPT_CERT"), "key": os.environ.get("FEDPROMPT_KEY")},
                         "admin", env_files=True)
    asub = admin.add_subparsers(dest="admin_cmd", required=True)
    ca.register(asub)
    create = add_command(asub, "create", "create a job from a job TOML; prints its id",
                         "fedprompt admin create examples/job.toml --start")
    create.add_argument("config", help="the job's TOML file, e.g. examples/job.toml")
    create.add_argument("--start", action="store_true", help="start it right away")
    for name, text in (("start", "start or resume a job"), ("pause", "pause after the current round"),
                       ("cancel", "cancel a job")):
        add_command(asub, name, text, f"fedprompt admin {name} rt-sentiment").add_argument("job", help=JOB_HELP)
    status = add_command(asub, "status", "a job's rounds, participants and metrics",
                         "fedprompt admin status rt-sentiment --format json")
    status.add_argument("job", help=JOB_HELP)
    add_format_flag(status, json_alias=True)
    add_format_flag(add_command(asub, "jobs", "list jobs", "fedprompt admin jobs --format json"))
    people = add_command(asub, "participants", "list participants (of one job or all)",
                         "fedprompt admin participants rt-sentiment")
    people.add_argument("job", nargs="?", help=JOB_HELP + " (default: every job's participants)")
    add_format_flag(people)
    flags = add_command(asub, "flags", "robust aggregation: each round's accepted/rejected updates and scores, "
                                       "rejection streaks, quarantined participants",
                        "fedprompt admin flags rt-sentiment")
    flags.add_argument("job", help=JOB_HELP)
    add_format_flag(flags, json_alias=True)
    release = add_command(asub, "release", "lift a participant's quarantine so it can be selected again",
                          "fedprompt admin release rt-sentiment participant:bank-c")
    release.add_argument("job", help=JOB_HELP)
    release.add_argument("participant", help="the quarantined participant's identity, e.g. participant:bank-c")
    export = add_command(asub, "export", "save a plaintext job's global prompt or adapter: a file for `fedprompt "
                                         "predict`, or a peft adapter directory any Hugging Face user can load",
                         "fedprompt admin export rt-sentiment --format peft --out rt-adapter")
    export.add_argument("job", help=JOB_HELP)
    export.add_argument("--out", required=True, help="--format prompt: the file to write (safetensors: the prompt and "
                                                     "the job's config); peft: a new or empty directory")
    export.add_argument("--format", choices=FORMATS, default="prompt",
                        help="prompt (default): fedprompt's prompt file; peft: adapter_config.json, "
                             "adapter_model.safetensors, fedprompt_task.json (+ the head) and a model card README.md")
    export.add_argument("--version", type=int, help="global version, 0 = the initial prompt (default: the latest)")
    audit = add_command(asub, "audit", "the admin actions recorded (who, when, what, and whether it was refused), "
                                       "oldest first", "fedprompt admin audit --job rt-sentiment --limit 20")
    audit.add_argument("--job", help=JOB_HELP + " (default: every job's actions)")
    audit.add_argument("--limit", type=_count, default=0, help="only the latest N actions (default: all, up to 10,000)")
    add_format_flag(audit)
    for name, command in asub.choices.items():
        if name != "ca":
            add_connection_flags(command, None, "admin", env_files=True)
            command.set_defaults(fn=cmd_admin)
