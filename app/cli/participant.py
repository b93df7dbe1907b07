"""``fedprompt participant``: run a participant daemon."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from fedprompt.app.adapter_export import FORMATS
from fedprompt.app.cli.common import (
    FORMAT_FLAGS,
    add_command,
    add_connection_flags,
    add_format_args,
    add_placement_args,
    coordinator_default,
    parse_overrides,
)
from fedprompt.errors import FileError
from fedprompt.locations import LATEST_PROMPT

if TYPE_CHECKING:
    from fedprompt.app.cli.common import Subparsers


def cmd_participant_run(args: argparse.Namespace) -> int:
    from fedprompt.config import ParticipantConfig, load_toml, parse_toml
    from fedprompt.participant.daemon import run_daemon

    overrides = parse_overrides(args.set)
    for key in ("coordinator", "job", "name", "data_dir", "state_dir", "threads", "ca_cert", "cert", "key",
                "server_name", "model_service", "metrics_listen", "device", "dtype"):
        value = getattr(args, key)
        if value not in (None, ""):
            overrides[f"participant.{key}"] = value
    for flag, key in FORMAT_FLAGS.items():
        if getattr(args, flag) is not None:
            overrides[f"participant.format.{key}"] = getattr(args, flag)
    if args.insecure:
        overrides["participant.insecure"] = True
    config = (load_toml(args.config, ParticipantConfig, overrides) if args.config
              else parse_toml("", ParticipantConfig, overrides=overrides))
    run_daemon(config.participant, progress=not args.no_progress)
    return 0


def cmd_participant_export(args: argparse.Namespace) -> int:
    """The latest global this site holds (decrypted, in encrypted jobs) as a prompt file or a peft adapter."""
    from fedprompt.app.adapter_export import export_peft, out_directory, site_facts
    from fedprompt.app.cli import installed_version
    from fedprompt.files import writable
    from fedprompt.promptfile import read_prompt, save_prompt

    if args.format == "peft":
        out_directory(args.out)
    else:
        writable(args.out, "--out")
    latest = Path(args.state_dir) / LATEST_PROMPT
    if not latest.exists():
        raise FileError(f"--state-dir {args.state_dir}: holds no global version yet ({LATEST_PROMPT} is written "
                        "when this site first downloads or decrypts one)")
    vector, config_toml, meta = read_prompt(latest)
    if args.format == "peft":
        export_peft(vector, config_toml, Path(args.out), site_facts(Path(args.state_dir), config_toml, meta),
                    installed_version())
    else:
        save_prompt(Path(args.out), vector, config_toml, int(meta.get("version", 0)), meta.get("job_id", ""))
    print(f"wrote {args.out}")
    return 0


def register(sub: Subparsers) -> None:
    """``participant run`` and ``participant export``."""
    part = add_command(sub, "participant", "run a participant daemon",
                        "fedprompt participant run --config examples/participant.toml"
                        ).add_subparsers(dest="sub", required=True)
    run = add_command(part, "run", "join a job and train on local data until it is done",
                      "fedprompt participant run --insecure --name participant:hospital-a --job rt-sentiment "
                      "--data-dir data/participant-0 --state-dir state/hospital-a")
    run.add_argument("--config", help="participant TOML ([participant] table)")
    add_connection_flags(run, {"coordinator": coordinator_default()}, "participant", config_file=True)
    run.add_argument("--job", help="job name or id to join")
    run.add_argument("--name", help="this site's identity (insecure mode only; certificates decide otherwise)")
    run.add_argument("--data-dir", dest="data_dir", help="directory with train.jsonl and test.jsonl")
    run.add_argument("--state-dir", dest="state_dir", help="directory for this site's state and update audit log")
    run.add_argument("--threads", type=int, help="torch threads for this process (default 1)")
    run.add_argument("--model-service", dest="model_service",
                     help="host:port of a query-only model service (black-box jobs)")
    run.add_argument("--metrics-listen", dest="metrics_listen",
                     help="host:port of a plain-HTTP Prometheus endpoint, /metrics (default: none)")
    add_placement_args(run, default=None)
    add_format_args(run)
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    run.set_defaults(fn=cmd_participant_run)
    export = add_command(part, "export", "save the latest global this site holds (in encrypted jobs: the one it "
                                         "decrypted) as a prompt file or a peft adapter directory",
                         "fedprompt participant export --state-dir state/hospital-a --format peft --out rt-adapter")
    export.add_argument("--state-dir", dest="state_dir", required=True, help="the site's --state-dir")
    export.add_argument("--out", required=True, help="--format prompt: the file to write; peft: a new or empty "
                                                     "directory")
    export.add_argument("--format", choices=FORMATS, default="peft",
                        help="peft (default): a peft adapter directory with a model card; prompt: fedprompt's "
                             "prompt file for `fedprompt predict`")
    export.set_defaults(fn=cmd_participant_export)
