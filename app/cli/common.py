"""What several command groups share: ``--set`` parsing, server settings, serving until a signal, the data-plan
flags, and the group parser with its example."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedprompt.errors import ConfigError, FedPromptError, quoted

if TYPE_CHECKING:
    from fedprompt.data.formats import LoadReport

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def group_parser(sub: Subparsers, name: str, help: str, example: str) -> argparse.ArgumentParser:
    """A command group's parser (``fedprompt NAME``), its ``--help`` ending with one example."""
    return sub.add_parser(name, help=help, epilog=f"example:\n  {example}",
                          formatter_class=argparse.RawDescriptionHelpFormatter)


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
    p.add_argument("--dataset", help=f"rotten_tomatoes, bbc_news, or a CSV/TSV/JSONL path with a text and a label "
                                     f"column (default {plan.dataset})")
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
    p.add_argument("--encoding", help=f"a data file's text encoding, e.g. latin-1 or cp1252 (default {fmt.encoding})")
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
        where = f" (line{'s' if load.bad_rows > 1 else ''} {', '.join(map(str, load.bad_lines))}{more})"
    return (f"{dataset}: {load.rows} rows read; dropped {load.bad_rows} without a valid label{where}, "
            f"{load.empty} empty texts, {load.duplicates} repeated texts (the first kept), {load.conflict_rows} rows "
            f"of {load.conflicts} texts given different labels (none kept); {kept} examples kept")
