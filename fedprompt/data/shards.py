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
from dataclasses import dataclass, field
from pathlib import Path

from fedprompt.data import partition
from fedprompt.data.datasets import BUILTIN, Example, load_dataset, read_jsonl, train_test_split, write_jsonl
from fedprompt.errors import ConfigError, FileError


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
    flags and a simulation file's ``[simulation]`` table (``[simulation.partition]`` for the split).
    ``participants`` is in [1, 1000], ``test_size`` in [1, 10000000] and ``seed`` in [0, 2**63 - 1] (it seeds
    NumPy generators, which take no negative seed)."""

    dataset: str = "rotten_tomatoes"
    participants: int = 3
    test_size: int = 1000
    seed: int = 0
    partition: PartitionSpec = field(default_factory=PartitionSpec)

    def validate(self, prefix: str) -> None:
        if not 1 <= self.participants <= 1000:
            raise ConfigError(f"{prefix}.participants: must be in [1, 1000], got {self.participants}")
        if not 1 <= self.test_size <= 10_000_000:
            raise ConfigError(f"{prefix}.test_size: must be in [1, 10000000], got {self.test_size}")
        if not 0 <= self.seed <= 2**63 - 1:
            raise ConfigError(f"{prefix}.seed: must be in [0, {2**63 - 1}], got {self.seed}")
        self.partition.validate(f"{prefix}.partition")

    def sites(self, label_names: tuple[str, ...] | None = None) -> list[SiteData]:
        """Load the dataset and deal it to ``participants`` sites, in memory."""
        train, test, names = load_split(self.dataset, self.test_size, self.seed, label_names)
        return split_sites(train, test, names, self.participants, self.partition, self.seed)


def split_sites(
    train: list[Example], test: list[Example], label_names: tuple[str, ...], n_sites: int,
    spec: PartitionSpec, seed: int,
) -> list[SiteData]:
    """Deal a train/test split across ``n_sites`` per ``spec``; pure, seeded, in memory."""
    index = {name: i for i, name in enumerate(label_names)}
    labels = [index[ex.label] for ex in train]
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
    dataset: str, test_size: int, seed: int, label_names: tuple[str, ...] | None = None
) -> tuple[list[Example], list[Example], tuple[str, ...]]:
    """Load a dataset and split it deterministically; label names default to the built-in's or sorted labels."""
    examples = load_dataset(dataset)
    names = label_names or (BUILTIN[dataset].label_names if dataset in BUILTIN else tuple(sorted({e.label for e in examples})))
    unknown = {e.label for e in examples} - set(names)
    if unknown:
        raise ConfigError(f"dataset {dataset}: labels {sorted(unknown)} are not among {list(names)}")
    train, test = train_test_split(examples, test_size, seed)
    return train, test, names


def prepare(plan: DataPlan, out_dir: Path) -> list[Path]:
    """Write one directory per site plus ``meta.json`` and the global ``test.jsonl``; returns the site dirs."""
    train, test, names = load_split(plan.dataset, plan.test_size, plan.seed)
    sites = split_sites(train, test, names, plan.participants, plan.partition, plan.seed)
    dirs = [out_dir / f"participant-{k}" for k in range(len(sites))]
    meta = {
        "dataset": plan.dataset, "label_names": list(names), "seed": plan.seed, "test_size": plan.test_size,
        "partition": dataclasses.asdict(plan.partition), "sites": [{"dir": d.name, "train": len(s.train), "test": len(s.test),
                                                "unlabelled": len(s.unlabelled)} for d, s in zip(dirs, sites)],
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


def load_site(site_dir: str | Path) -> SiteData:
    """Read a site directory; ``train.jsonl`` is required, the rest optional."""
    d = Path(site_dir)
    if not (d / "train.jsonl").exists():
        raise ConfigError(f"participant.data_dir: {d} has no train.jsonl")
    return SiteData(read_jsonl(d / "train.jsonl"), read_jsonl(d / "test.jsonl"), read_jsonl(d / "unlabelled.jsonl"))
