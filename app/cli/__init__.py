"""``fedprompt``: the one command-line entry point.  This module assembles the parser from one module per command
group (coordinator, participant, model, admin with admin ca, predict, data, simulate, demo, bench, completion) and holds
``main``; each group module registers its subcommands and imports what they need only when they run."""

from __future__ import annotations

import argparse
import shlex
import sys
import textwrap

from fedprompt.app.cli import (
    admin,
    bench,
    completion,
    coordinator,
    data,
    demo,
    model,
    participant,
    predict,
    simulate,
)
from fedprompt.app.cli.common import (
    Parser,
    RootParser,
    add_connection_flags,
    add_logging_flags,
    ask_for_a_command,
    commands,
)
from fedprompt.errors import ERRORS

#: The command groups in ``fedprompt --help`` order; each has ``register(sub)``.
GROUPS = (coordinator, participant, model, admin, predict, data, simulate, demo, bench, completion)


def installed_version() -> str:
    """The version of the installed ``fedprompt`` distribution (what a bug report should quote), or a note that
    this checkout runs without being installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedprompt")
    except PackageNotFoundError:
        return "(not installed: running from a source checkout)"


def build_parser() -> argparse.ArgumentParser:
    """The ``fedprompt`` parser: every group's commands, each taking the logging flags wherever they are typed."""
    parser = RootParser(
        prog="fedprompt",
        description=textwrap.fill("Federated soft-prompt tuning of a frozen language model: institutions tune a shared "
                                  "prompt without pooling data; only prompt-sized vectors cross the network.", 100),
        epilog="example:\n  fedprompt --json-logs coordinator serve --insecure --listen 127.0.0.1:50051 "
               "--state-dir coord-state",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}",
                        help="print the installed fedprompt version and exit")
    add_logging_flags(parser, first=True)
    add_connection_flags(parser, None, "admin, participant or probe", top=True)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for group in GROUPS:
        group.register(sub)
    for command in commands(parser):
        if command is not parser:
            add_logging_flags(command, first=False)
        ask_for_a_command(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one ``fedprompt`` command; a domain error prints ``fedprompt: error: ...`` and returns 2."""
    from fedprompt.app.report import COMMAND
    from fedprompt.logs import configure

    args = build_parser().parse_args(argv)
    configure(args.log_level, args.json_logs)
    token = COMMAND.set(shlex.join(["fedprompt", *(sys.argv[1:] if argv is None else argv)]))
    try:
        return int(args.fn(args))
    except ERRORS as exc:
        print(f"fedprompt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        COMMAND.reset(token)
