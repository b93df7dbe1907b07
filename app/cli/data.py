"""``fedprompt data``: prepare per-site data directories."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedprompt.app.cli.common import add_command, add_plan_args, plan_overrides

if TYPE_CHECKING:
    from fedprompt.app.cli.common import Subparsers


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from fedprompt.config import from_mapping, set_dotted
    from fedprompt.data.shards import DataPlan, prepare
    from fedprompt.files import writable

    mapping: dict[str, Any] = {}
    for dotted, value in plan_overrides(args).items():
        set_dotted(mapping, dotted, value)
    writable(args.out, "--out", directory=True)
    dirs = prepare(from_mapping(DataPlan, mapping), Path(args.out))
    meta = json.loads((Path(args.out) / "meta.json").read_text(encoding="utf-8"))
    for site in meta["sites"]:
        print(f"{Path(args.out) / site['dir']}: train {site['train']}, test {site['test']}, "
              f"unlabelled {site['unlabelled']}")
    print(f"{len(dirs)} site directories and test.jsonl written to {args.out}")
    return 0


def register(sub: Subparsers) -> None:
    """``data prepare``."""
    data = add_command(sub, "data", "prepare per-site data directories",
                        "fedprompt data prepare --dataset rotten_tomatoes --out data --participants 3 "
                        "--partition dirichlet --alpha 0.5").add_subparsers(dest="sub", required=True)
    prep = add_command(data, "prepare", "split a dataset into one directory per site",
                       "fedprompt data prepare --dataset bbc_news --out data --participants 4 --partition iid")
    prep.add_argument("--out", required=True, help="directory to write participant-K/ site directories into")
    add_plan_args(prep)
    prep.set_defaults(fn=cmd_data_prepare)
