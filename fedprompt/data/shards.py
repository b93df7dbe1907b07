"""Per-site data directories: what ``fedprompt data prepare`` writes and what a participant reads.

A site directory holds ``train.jsonl``, ``test.jsonl`` and optionally ``unlabelled.jsonl`` (lines of
``{"text": ..., "label": ...}``, the label empty for the unlabelled pool), exactly what an institution would
provide from its own records: the pool's hidden labels are never written there.  The
global test split is dealt IID across sites, so the example-weighted mean of the sites' test accuracies is
the accuracy on the whole test split.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from fedprompt.data import partition
from fedprompt.data.datasets import BUILTIN, Example, load_dataset, read_jsonl, train_test_split, write_jsonl
from fedprompt.data.formats import DataFormat, LoadReport, load_unlabelled
from fedprompt.errors import ConfigError, FileError, quoted


@dataclass(frozen=True)
class SiteData:
    """One site's examples.

    ``unlabelled`` texts carry an empty label.  ``unlabelled_gold`` holds their hidden true labels, in the
    same order, only when a simulation generated the split: it exists to *measure* pseudo-label accuracy
    and is never used for training (``participant.fewshot`` reads it in one place, its measurement).  Real
    sites, and site directories written by ``prepare``, have none.
    """

    train: list[Example]
    test: list[Example]
    unlabelled: list[Example] = field(default_factory=list)
    unlabelled_gold: list[str] = field(default_factory=list)


SCHEMES = ("iid", "dirichlet", "fewshot")


@dataclass(frozen=True)
class PartitionSpec:
    """How to split: ``iid``, ``dirichlet`` (label skew ``alpha``) or ``fewshot`` (AUG-FedPrompt's generator:
    ``shots`` labelled examples per site on average, Dirichlet skews of the labelled *quantity* and of the
    *label* mix, the rest an unlabelled pool).  Each alpha is in (0, 1e6] (beyond, a Dirichlet split is IID in
    all but name) and ``shots`` in [1, 1000000]."""

    scheme: str = "iid"
    alpha: float = 0.5
    shots: int = 32
    quantity_alpha: float = 1.0
    label_alpha: float = 1.0

    def validate(self, prefix: str) -> None:
        if self.scheme not in SCHEMES:
            raise ConfigError(f"{prefix}.scheme: must be one of {', '.join(SCHEMES)}, got {self.scheme!r}")
        for key in ("alpha", "quantity_alpha", "label_alpha"):
            if not 0 < getattr(self, key) <= 1e6:
                raise ConfigError(f"{prefix}.{key}: must be in (0, 1e+06], got {getattr(self, key)}")
        if not 1 <= self.shots <= 1_000_000:
            raise ConfigError(f"{prefix}.shots: must be in [1, 1000000], got {self.shots}")


@dataclass(frozen=True)
class DataPlan:
    """Which data, how many sites and how it is dealt: the one definition behind ``fedprompt data prepare``'s
    flags and a simulation file's ``[simulation]`` table (``[simulation.partition]`` for the split,
    ``[simulation.format]`` for how a file of the user's own is read).  ``participants`` is in [1, 1000], ``test_size`` in [1, 10000000] and ``seed`` in [0, 2**63 - 1] (it seeds
    NumPy generators, which take no negative seed)."""

    dataset: str = "rotten_tomatoes"
    participants: int = 3
    test_size: int = 1000
    seed: int = 0
    partition: PartitionSpec = field(default_factory=PartitionSpec)
    format: DataFormat = field(default_factory=DataFormat)

    def validate(self, prefix: str) -> None:
        if not 1 <= self.participants <= 1000:
            raise ConfigError(f"{prefix}.participants: must be in [1, 1000], got {self.participants}")
        if not 1 <= self.test_size <= 10_000_000:
            raise ConfigError(f"{prefix}.test_size: must be in [1, 10000000], got {self.test_size}")
        if not 0 <= self.seed <= 2**63 - 1:
            raise ConfigError(f"{prefix}.seed: must be in [0, {2**63 - 1}], got {self.seed}")
        self.partition.validate(f"{prefix}.partition")
        self.format.validate(f"{prefix}.format")
        if self.dataset in BUILTIN and self.format != DataFormat():
            raise ConfigError(f"{prefix}.format: is for a file of your own; the built-in {self.dataset} is read as it is")

    def deal(self, label_names: tuple[str, ...] | None = None,
             kind: str = "classification") -> tuple[list[SiteData], LoadReport]:
        """Load the dataset and deal it to ``participants`` sites, in memory; with the report of what reading it
        dropped, for the caller to show.  A generation job's (``kind``) examples are prompts and completions, not
        labels: they are dealt IID, and a label-skewed partition is refused."""
        loaded = load_dataset(self.dataset, self.format)
        if kind == "generation":
            if self.partition.scheme != "iid":
                raise ConfigError(f"simulation.partition.scheme: a generation job's examples have no labels to skew; "
                                  f"use 'iid', not {self.partition.scheme!r}")
            train, test = train_test_split(loaded.examples, self.test_size, self.seed)
            names: tuple[str, ...] = ()
        else:
            train, test, names = split_examples(loaded.examples, self.dataset, self.test_size, self.seed, label_names)
        return split_sites(train, test, names, self.participants, self.partition, self.seed), loaded.report


def split_sites(
    train: list[Example], test: list[Example], label_names: tuple[str, ...], n_sites: int,
    spec: PartitionSpec, seed: int,
) -> list[SiteData]:
    """Deal a train/test split across ``n_sites`` per ``spec``; pure, seeded, in memory.  Without
    ``label_names`` (a generation task) every example counts as one class."""
    index = {name: i for i, name in enumerate(label_names)}
    labels = [index[ex.label] for ex in train] if label_names else [0] * len(train)
    if spec.scheme == "iid":
        shards = partition.iid(labels, n_sites, seed)
    elif spec.scheme == "dirichlet":
        shards = partition.dirichlet(labels, n_sites, spec.alpha, seed)
    elif spec.scheme == "fewshot":
        shards = partition.fewshot(labels, n_sites, spec.shots, spec.quantity_alpha, spec.label_alpha, seed)
    else:
        raise ConfigError(f"partition.scheme: must be one of {', '.join(SCHEMES)}, got {spec.scheme!r}")
    test_shards = partition.iid([0] * len(test), n_sites, seed + 1)
    return [
        SiteData(
            train=[train[i] for i in shard.labelled],
            test=[test[i] for i in test_shard.labelled],
            unlabelled=[Example(train[i].text, "") for i in shard.unlabelled],
            unlabelled_gold=[train[i].label for i in shard.unlabelled],
        )
        for shard, test_shard in zip(shards, test_shards)
    ]


def load_split(
    dataset: str, test_size: int, seed: int, label_names: tuple[str, ...] | None = None,
    fmt: DataFormat | None = None,
) -> tuple[list[Example], list[Example], tuple[str, ...]]:
    """Load a dataset (a file read per ``fmt``) and split it deterministically (``split_examples``)."""
    return split_examples(load_dataset(dataset, fmt).examples, dataset, test_size, seed, label_names)


def split_examples(
    examples: list[Example], dataset: str, test_size: int, seed: int, label_names: tuple[str, ...] | None = None
) -> tuple[list[Example], list[Example], tuple[str, ...]]:
    """Split ``dataset``'s examples deterministically; label names default to the built-in's or the sorted labels
    found, and a label outside the names given is refused rather than dropped."""
    found = sorted({e.label for e in examples})
    names = label_names or (BUILTIN[dataset].label_names if dataset in BUILTIN else tuple(found))
    if len(names) < 2:
        raise ConfigError(f"dataset {dataset}: labels {list(names)} found; a classifier needs two or more")
    unknown = sorted(set(found) - set(names))
    if unknown:
        shown = ", ".join(quoted(label, 40) for label in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
        raise ConfigError(f"dataset {dataset}: {len(unknown)} labels ({shown}) are not among the job's "
                          f"task.label_names {list(names)} (fedprompt data prepare --write-job writes a job with "
                          "the file's labels)")
    train, test = train_test_split(examples, test_size, seed)
    return train, test, names


def prepare(plan: DataPlan, out_dir: Path) -> list[Path]:
    """Write one directory per site plus ``meta.json`` and the global ``test.jsonl``; returns the site dirs.

    ``meta.json`` records what reading the dataset dropped (``load``) and each site's examples per label, so
    what was written can be checked before any training."""
    loaded = load_dataset(plan.dataset, plan.format)
    train, test, names = split_examples(loaded.examples, plan.dataset, plan.test_size, plan.seed)
    sites = split_sites(train, test, names, plan.participants, plan.partition, plan.seed)
    dirs = [out_dir / f"participant-{k}" for k in range(len(sites))]
    meta = {
        "dataset": plan.dataset, "label_names": list(names), "seed": plan.seed, "test_size": plan.test_size,
        "partition": dataclasses.asdict(plan.partition), "format": dataclasses.asdict(plan.format),
        "load": dataclasses.asdict(loaded.report),
        "sites": [{"dir": d.name, "train": len(s.train), "test": len(s.test), "unlabelled": len(s.unlabelled),
                   "train_labels": _per_label(s.train, names), "test_labels": _per_label(s.test, names)}
                  for d, s in zip(dirs, sites)],
    }
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_jsonl(out_dir / "test.jsonl", test)
        for site_dir, site in zip(dirs, sites, strict=True):
            write_jsonl(site_dir / "train.jsonl", site.train)
            write_jsonl(site_dir / "test.jsonl", site.test)
            if site.unlabelled:
                write_jsonl(site_dir / "unlabelled.jsonl", site.unlabelled)
        (out_dir / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    except OSError as exc:
        raise FileError(f"cannot write the site directories under {out_dir}: {exc}") from exc
    return dirs


def _per_label(examples: list[Example], names: tuple[str, ...]) -> dict[str, int]:
    counts = Counter(ex.label for ex in examples)
    return {name: counts[name] for name in names}


def load_site(site_dir: str | Path, fmt: DataFormat | None = None) -> SiteData:
    """Read a site directory, each file checked as a user's own (``fmt``); ``train.jsonl`` is required, the
    rest optional."""
    d = Path(site_dir)
    if not (d / "train.jsonl").exists():
        raise ConfigError(f"participant.data_dir: {d} has no train.jsonl")
    pool = d / "unlabelled.jsonl"
    return SiteData(read_jsonl(d / "train.jsonl", fmt), read_jsonl(d / "test.jsonl", fmt),
                    load_unlabelled(pool, fmt) if pool.exists() else [])
