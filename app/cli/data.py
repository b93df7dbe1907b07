"""``fedprompt data``: prepare per-site data directories, say what reading the data did, and write a job for it."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedprompt.app.cli.common import add_command, add_plan_args, load_summary, plan_overrides

if TYPE_CHECKING:
    from fedprompt.app.cli.common import Subparsers
    from fedprompt.config import JobConfig
    from fedprompt.data.shards import DataPlan

#: How many labels a summary line names before it says how many there are in all.
SHOWN_LABELS = 12


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from fedprompt.config import from_mapping, set_dotted
    from fedprompt.data.formats import LoadReport
    from fedprompt.data.shards import DataPlan, prepare
    from fedprompt.files import writable

    mapping: dict[str, Any] = {}
    for dotted, value in plan_overrides(args).items():
        set_dotted(mapping, dotted, value)
    plan = from_mapping(DataPlan, mapping)
    writable(args.out, "--out", directory=True)
    if args.write_job:
        writable(args.write_job, "--write-job")
    out = Path(args.out)
    dirs = prepare(plan, out)
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    names = meta["label_names"]
    print(load_summary(plan.dataset, LoadReport(**{**meta["load"], "bad_lines": tuple(meta["load"]["bad_lines"])})))
    print(f"labels ({len(names)}): {_names(names)}")
    for site in meta["sites"]:
        print(f"{out / site['dir']}: train {site['train']} ({_counts(site['train_labels'])}), "
              f"test {site['test']} ({_counts(site['test_labels'])}), unlabelled {site['unlabelled']}")
    print(f"{len(dirs)} site directories and test.jsonl written to {args.out}")
    if args.write_job:
        write_job(Path(args.write_job), job_for(plan, tuple(names), args.model), plan)
        print(f"job written to {args.write_job}; run it with: fedprompt simulate --config {args.write_job}")
    return 0


def _names(names: list[str]) -> str:
    shown = ", ".join(name if len(name) <= 40 else f"{name[:40]}..." for name in names[:SHOWN_LABELS])
    return shown + (f", ... ({len(names)} in all)" if len(names) > SHOWN_LABELS else "")


def _counts(counts: dict[str, int]) -> str:
    return _names([f"{name} {n}" for name, n in counts.items()])


def job_for(plan: DataPlan, label_names: tuple[str, ...], model: str) -> JobConfig:
    """A job for ``plan``'s data: its labels (each described by its own name), every site in every round, the
    given model; the rest the defaults.  Validated as any job file is."""
    from fedprompt.config import JobConfig, from_mapping
    from fedprompt.config.names import job_name_problem

    stem = Path(plan.dataset).stem
    job = {"name": stem if job_name_problem(stem) is None else "job", "participants_per_round": plan.participants,
           "min_participants": min(2, plan.participants)}
    return from_mapping(JobConfig, {"job": job, "model": {"path": model},
                                    "task": {"label_names": list(label_names), "label_words": list(label_names)}})


def write_job(path: Path, job: JobConfig, plan: DataPlan) -> None:
    """Write the simulation file for ``job`` on ``plan``'s data, naming a file dataset by its absolute path so the
    job runs from any directory."""
    from fedprompt.app.simulate import simulation_text
    from fedprompt.data.datasets import BUILTIN
    from fedprompt.errors import FileError

    dataset = plan.dataset if plan.dataset in BUILTIN else str(Path(plan.dataset).resolve())
    text = simulation_text(job, dataclasses.replace(plan, dataset=dataset))
    try:
        path.write_text(f"# Written by fedprompt data prepare; run: fedprompt simulate --config {path}\n"
                        "# task.label_words are the label names: words that describe each label give a better start.\n"
                        f"{text}", encoding="utf-8")
    except OSError as exc:
        raise FileError(f"cannot write --write-job {path}: {exc.strerror or exc}") from exc


def register(sub: Subparsers) -> None:
    """``data prepare``."""
    data = add_command(sub, "data", "prepare per-site data directories",
                        "fedprompt data prepare --dataset reviews.csv --text-column tweet --label-column sentiment "
                        "--out data --write-job job.toml").add_subparsers(dest="sub", required=True)
    prep = add_command(data, "prepare", "split a dataset into one directory per site",
                       "fedprompt data prepare --dataset bbc_news --out data --participants 4 --partition iid")
    prep.add_argument("--out", required=True, help="directory to write participant-K/ site directories into")
    add_plan_args(prep)
    prep.add_argument("--write-job", help="also write a simulation file for this data (its labels inferred), "
                                          "ready for fedprompt simulate --config")
    prep.add_argument("--model", default="builtin:minilm",
                      help="the model the written job uses: builtin:minilm, builtin:smollm2 or a local model "
                           "directory (default builtin:minilm)")
    prep.set_defaults(fn=cmd_data_prepare)
