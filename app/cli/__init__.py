"""``fedprompt``: the one command-line entry point.  This module assembles the parser from one module per command
group (coordinator, participant, model, admin with admin ca, predict, data, simulate, demo, bench) and holds
``main``; each group module registers its subcommands and imports what they need only when they run."""

from __future__ import annotations

import argparse
import sys

from fedprompt.app.cli import admin, bench, coordinator, data, demo, model, participant, predict, simulate
from fedprompt.errors import ERRORS

#: The command groups in ``fedprompt --help`` order; each has ``register(sub)``.
GROUPS = (coordinator, participant, model, admin, predict, data, simulate, demo, bench)


def build_parser() -> argparse.ArgumentParser:
    """The ``fedprompt`` parser: global logging options, then every group's subcommands."""
    parser = argparse.ArgumentParser(
        prog="fedprompt",
        description="Federated soft-prompt tuning of a frozen language model: institutions tune a shared prompt "
                    "without pooling data; only prompt-sized vectors cross the network.",
    )
    parser.add_argument("--log-level", default="info", help="debug, info, warning or error (default info)")
    parser.add_argument("--json-logs", action="store_true", help="structured JSON log lines on stderr")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``fedprompt`` command; a domain error prints ``fedprompt: error: ...`` and returns 2."""
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
