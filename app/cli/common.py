"""What several command groups share: the flags every command takes (logging) and every client of the
coordinator takes (connection), ``--set`` parsing, server settings, serving until a signal, the data-plan
flags, and a command's parser with its example."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from fedprompt.errors import ConfigError, FedPromptError, quoted
from fedprompt.logs import LEVELS

if TYPE_CHECKING:
    from fedprompt.data.formats import LoadReport
    from fedprompt.wire.channel import ClientTls

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

#: The default of a flag's copy on a subcommand: the flag sets its value only when typed there, so a value typed
#: earlier on the command line (or the first copy's default) stands (``fedprompt --json-logs simulate`` and
#: ``fedprompt simulate --json-logs`` mean the same).
UNSET = argparse.SUPPRESS


def add_logging_flags(parser: argparse.ArgumentParser, first: bool) -> None:
    """``--log-level`` and ``--json-logs``, on the top-level parser (``first``: with their defaults) and on every
    command below it (without), so they work wherever they are typed."""
    parser.add_argument("--log-level", choices=LEVELS, default="info" if first else UNSET,
                        help="log lines at this level and above, on stderr (default info)")
    parser.add_argument("--json-logs", action="store_true", default=False if first else UNSET,
                        help="structured JSON log lines on stderr")


#: Where a client command finds the coordinator when neither ``--coordinator`` nor ``$FEDPROMPT_COORDINATOR`` says.
DEFAULT_COORDINATOR = "127.0.0.1:50051"


def coordinator_default() -> str | None:
    """``$FEDPROMPT_COORDINATOR``, read when the parser is built: the one variable that names the coordinator for
    every client command (admin, participant run, coordinator health), as the default of ``--coordinator``."""
    return os.environ.get("FEDPROMPT_COORDINATOR") or None


#: The connection flags' argparse dests.
CONNECTION_DESTS = ("coordinator", "ca_cert", "cert", "key", "server_name", "insecure")
#: Where ``fedprompt`` itself keeps a connection flag typed before the command's name (``fedprompt --coordinator X
#: admin jobs``) until ``settle_connection`` hands it to the command.
GLOBAL = "global_"


def add_connection_flags(parser: argparse.ArgumentParser, defaults: dict[str, Any] | None, role: str,
                         env_files: bool = False, config_file: bool = False, top: bool = False) -> None:
    """How a client command reaches the coordinator: ``--coordinator``, the mTLS files, or ``--insecure``.

    ``defaults`` (by dest; absent means None) are the command's, applied by ``settle_connection`` to the flags
    typed nowhere; ``None`` makes a copy below such a command (``admin``'s job commands), so a flag works on
    either side of the command's name.  ``top``: ``fedprompt``'s own copy, typed before any command.  For the
    help: ``role``, that of the caller's certificate; ``env_files``, the files default to ``$FEDPROMPT_CA_CERT``,
    ``$FEDPROMPT_CERT`` and ``$FEDPROMPT_KEY``; ``config_file``, a ``--config`` file's address comes before the
    fallback."""
    if defaults is not None:
        parser.set_defaults(connection_defaults=defaults)
    prefix = GLOBAL if top else ""

    def env(variable: str) -> str:
        return f" (default ${variable})" if env_files else ""

    coordinator = ("coordinator host:port, for the commands that reach one (admin, participant run, coordinator "
                   "health)" if top else "coordinator host:port (default $FEDPROMPT_COORDINATOR, else "
                   + ("the --config file's, else " if config_file else "") + f"{DEFAULT_COORDINATOR})"
                   + ("; several, comma-separated, for failover replicas: the next is tried when one is unavailable"
                      if config_file and not top else ""))
    parser.add_argument("--coordinator", dest=prefix + "coordinator", default=UNSET, help=coordinator)
    parser.add_argument("--ca-cert", dest=prefix + "ca_cert", default=UNSET,
                        help="federation CA certificate: verifies the coordinator" + env("FEDPROMPT_CA_CERT"))
    parser.add_argument("--cert", dest=prefix + "cert", default=UNSET,
                        help=f"your certificate (role {role}:), signed by the federation CA" + env("FEDPROMPT_CERT"))
    parser.add_argument("--key", dest=prefix + "key", default=UNSET, help="its private key" + env("FEDPROMPT_KEY"))
    parser.add_argument("--server-name", dest=prefix + "server_name", default=UNSET,
                        help="verify the coordinator's certificate for this name (one of its SANs), not its address")
    parser.add_argument("--insecure", dest=prefix + "insecure", action="store_true", default=UNSET,
                        help="plaintext to an --insecure coordinator: local development only (excludes the "
                             "certificate flags)")


def settle_connection(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Give a client command its connection flags: typed after its name, else before it (``fedprompt
    --coordinator X admin jobs``), else its defaults.  One typed before a command that reaches no coordinator
    is refused, not ignored (``fedprompt --insecure coordinator serve`` would otherwise serve with TLS or fail
    on a certificate the user thought unneeded)."""
    typed = {dest: getattr(args, GLOBAL + dest) for dest in CONNECTION_DESTS if hasattr(args, GLOBAL + dest)}
    for dest in typed:
        delattr(args, GLOBAL + dest)
    defaults = getattr(args, "connection_defaults", None)
    if defaults is None:
        if typed:
            flag = "--" + next(iter(typed)).replace("_", "-")
            parser.error(f"{flag} before the command applies only to commands that reach a coordinator (admin, "
                         "participant run, coordinator health)")
        return
    del args.connection_defaults
    for dest in CONNECTION_DESTS:
        if not hasattr(args, dest):
            setattr(args, dest, typed.get(dest, defaults.get(dest, False if dest == "insecure" else None)))


def add_format_flag(parser: argparse.ArgumentParser, json_alias: bool = False) -> None:
    """A listing command's ``--format``: ``table`` (headers, and a sentence when there is nothing to list) or
    ``json`` (for scripts).  ``json_alias``: ``--json`` too, the flag ``status`` and ``flags`` had first."""
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        help="table: aligned columns under headers (default); json: for scripts")
    if json_alias:
        parser.add_argument("--json", dest="format", action="store_const", const="json", default=UNSET,
                            help="same as --format json")


def add_track_flag(parser: argparse.ArgumentParser) -> None:
    """``--track SINK:TARGET`` (``fedprompt.app.tracking``), repeatable, for the commands that run a job or a bench."""
    parser.add_argument("--track", action="append", default=[], metavar="SINK:DIR",
                        help="also send parameters, per-round metrics, epsilon, the report and the plot to an "
                             "experiment tracker: mlflow:DIR (or mlflow:URI) or tensorboard:DIR; repeatable (needs "
                             "the tracking extra; default: none)")


def print_json(value: Any) -> None:
    """A listing as ``--format json`` prints it: dataclasses as objects, indented."""
    import dataclasses
    import json

    def plain(item: Any) -> Any:
        return dataclasses.asdict(item) if dataclasses.is_dataclass(item) and not isinstance(item, type) else item

    print(json.dumps([plain(v) for v in value] if isinstance(value, list) else plain(value), indent=2))


def client_tls(args: argparse.Namespace, hint: str = "") -> ClientTls | None:
    """A client command's transport from its connection flags: None (plaintext) with ``--insecure``, which may not
    be combined with a certificate flag, else mTLS, which needs all three files (``hint`` says where else they
    may come from)."""
    from fedprompt.wire.channel import ClientTls

    files = {"--ca-cert": args.ca_cert, "--cert": args.cert, "--key": args.key}
    if args.insecure:
        given = [flag for flag, value in {**files, "--server-name": args.server_name}.items() if value]
        if given:
            raise FedPromptError(f"--insecure cannot be combined with {', '.join(given)}")
        return None
    missing = [flag for flag, value in files.items() if not value]
    if missing:
        raise FedPromptError(f"calls to the coordinator use mTLS: give {', '.join(missing)}{hint}; --insecure only "
                             "for a local --insecure coordinator")
    return ClientTls(args.ca_cert, args.cert, args.key, args.server_name or "")


class Parser(argparse.ArgumentParser):
    """The ``fedprompt`` parser and, through ``add_subparsers``, every command's: a usage error is one line,
    ``fedprompt: error: COMMAND: ...``, exit 2, like every other refusal of the command line."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("fedprompt").strip()
        self.exit(2, f"fedprompt: error: {command + ': ' if command else ''}{message} "
                     f"(`{self.prog} --help` says more)\n")


class RootParser(Parser):
    """``fedprompt``'s own parser: after parsing, a connection flag typed before the command reaches it
    (``settle_connection``)."""

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:  # argparse types it by overloads
        parsed, rest = super().parse_known_args(args, namespace)
        settle_connection(self, parsed)
        return parsed, rest


def commands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and every command below it, depth first: the parser tree that global flags are added to and
    tests walk."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found.extend(commands(child))
    return found


def ask_for_a_command(parser: argparse.ArgumentParser) -> None:
    """A command with commands below it (``fedprompt coordinator``), typed alone, is refused naming them (argparse
    said "required: sub"): its commands become optional, and its own action is that refusal, which any command
    typed below it replaces."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            action.required = False
            parser.set_defaults(fn=_refusal(parser, ", ".join(action.choices)))


def _refusal(parser: argparse.ArgumentParser, names: str) -> Callable[[argparse.Namespace], int]:
    def refuse(args: argparse.Namespace) -> int:
        parser.error(f"choose a command: {names}")

    return refuse


def add_command(sub: Subparsers, name: str, help: str, example: str, description: str = "") -> argparse.ArgumentParser:
    """A command's parser (``fedprompt ... NAME``): its ``--help`` says what it does (``description``, else
    ``help``) and ends with one example, kept on one line so that it can be pasted."""
    return sub.add_parser(name, help=help, description=textwrap.fill(description or help, 100),
                          epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``--set a.b=value`` pairs; values parse as TOML scalars (numbers, booleans, quoted strings, lists), and
    a value that is not TOML (``--set job.name=demo``) is taken as the string it is, for validation to judge."""
    from fedprompt.config import toml_mapping

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise FedPromptError(f"--set {quoted(pair)}: expected key=value")
        try:
            out[key.strip()] = toml_mapping(f"v = {raw}", "--set")["v"]
        except ConfigError:
            out[key.strip()] = raw
    return out


def server_settings(args: argparse.Namespace, config_cls: type, section: str, keys: tuple[str, ...]) -> Any:
    """A server's settings: its TOML file (``--config``) or the defaults, then ``--set`` pairs, then the named
    command-line options that were given, then ``--insecure``; validated at load with the bad key named."""
    from fedprompt.config import load_toml, parse_toml

    overrides = parse_overrides(args.set)
    for key in keys:
        if getattr(args, key) not in (None, ""):
            overrides[f"{section}.{key}"] = getattr(args, key)
    if args.insecure:
        overrides[f"{section}.insecure"] = True
    config: Any = (load_toml(args.config, config_cls, overrides) if args.config
                   else parse_toml("", config_cls, overrides=overrides))
    return getattr(config, section)


def serve_until_signalled(server: Any, port_file: str | None) -> None:
    """Start ``server`` (a coordinator or model service), write its port to ``port_file``, and stop it
    gracefully on SIGTERM or SIGINT, or when the server sets its ``ended`` event (a deposed coordinator).  A
    signal while it starts (a coordinator replica standing by for its lease) asks it to ``resign``: it stops
    waiting and exits cleanly without having served."""
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        starting = asyncio.ensure_future(server.start())
        await asyncio.wait([starting, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        if not starting.done() and hasattr(server, "resign"):
            server.resign()
        port = await starting
        if port and port_file:
            Path(port_file).write_text(str(port), encoding="utf-8")
        ended = getattr(server, "ended", None) or asyncio.Event()
        if port:
            await asyncio.wait([asyncio.ensure_future(stop.wait()), asyncio.ensure_future(ended.wait())],
                               return_when=asyncio.FIRST_COMPLETED)
        await server.stop()

    asyncio.run(main())


#: Data-format flag (argparse dest) -> ``DataFormat`` key; the data plan's flags and ``participant run`` share it.
FORMAT_FLAGS = {"text_column": "text_column", "label_column": "label_column", "encoding": "encoding",
                "skip_bad_rows": "skip_bad_rows"}
#: Data-plan flag (argparse dest) -> dotted ``DataPlan`` key; ``data prepare`` and ``simulate`` share it.
PLAN_FLAGS = {"dataset": "dataset", "participants": "participants", "partition": "partition.scheme",
              "alpha": "partition.alpha", "shots": "partition.shots", "quantity_alpha": "partition.quantity_alpha",
              "label_alpha": "partition.label_alpha", "test_size": "test_size", "seed": "seed",
              **{flag: f"format.{key}" for flag, key in FORMAT_FLAGS.items()}}


def add_plan_args(p: argparse.ArgumentParser) -> None:
    """The data-plan flags; unset ones stay None so ``DataPlan``'s defaults (or a config file's values) stand."""
    from fedprompt.data.shards import SCHEMES, DataPlan

    plan = DataPlan()
    p.add_argument("--dataset", help=f"rotten_tomatoes, bbc_news, or a CSV/TSV/JSONL/Parquet file or a datasets "
                                     f"save_to_disk directory with a text and a label column (default {plan.dataset})")
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
    add_format_args(p)


def add_format_args(p: argparse.ArgumentParser) -> None:
    """The data-format flags (``DataFormat``); unset ones stay None so the defaults or a config file's values
    stand."""
    from fedprompt.data.formats import DataFormat

    fmt = DataFormat()
    p.add_argument("--text-column", help=f"a data file's column holding the text (default {fmt.text_column})")
    p.add_argument("--label-column", help=f"a data file's column holding the label (default {fmt.label_column})")
    p.add_argument("--encoding", help=f"a text data file's encoding, e.g. latin-1 or cp1252 (default {fmt.encoding}: "
                                      "the encoding a byte-order mark names, else UTF-8)")
    p.add_argument("--skip-bad-rows", action="store_true", default=None,
                   help="drop a data file's rows without a valid label (and say how many) instead of refusing it")


def plan_overrides(args: argparse.Namespace, prefix: str = "") -> dict[str, Any]:
    """The data-plan flags the user gave, as dotted ``DataPlan`` keys (unset flags leave the file's values)."""
    return {prefix + key: getattr(args, flag) for flag, key in PLAN_FLAGS.items() if getattr(args, flag) is not None}


def load_summary(dataset: str, load: LoadReport) -> str:
    """One line for ``data prepare`` and ``simulate``: rows read, each kind of row dropped, examples kept."""
    kept = load.rows - load.bad_rows - load.empty - load.duplicates - load.conflict_rows
    where = ""
    if load.bad_rows:
        more = ", ..." if load.bad_rows > len(load.bad_lines) else ""
        where = f" ({load.numbered}{'s' if load.bad_rows > 1 else ''} {', '.join(map(str, load.bad_lines))}{more})"
    how = f" (read as {load.encoding})" if load.encoding else ""
    return (f"{dataset}{how}: {load.rows} rows read; dropped {load.bad_rows} without a valid label{where}, "
            f"{load.empty} empty texts, {load.duplicates} repeated texts (the first kept), {load.conflict_rows} rows "
            f"of {load.conflicts} texts given different labels (none kept); {kept} examples kept")


def add_placement_args(parser: argparse.ArgumentParser, default: str | None = "auto") -> None:
    """``--device`` and ``--dtype``: where a frozen PLM runs and in which precision (``fedprompt.models.placement``);
    ``default`` None leaves them to a config file."""
    parser.add_argument("--device", default=default,
                        help="auto | cpu | cuda | cuda:N: where the frozen PLM runs (default auto: a GPU if torch "
                             "sees one, else the CPU)")
    parser.add_argument("--dtype", default=default,
                        help="auto | float32 | bfloat16 | float16: the frozen PLM's precision (default auto: bfloat16 "
                             "on a GPU that has it, else float32); trainable tensors stay float32")
