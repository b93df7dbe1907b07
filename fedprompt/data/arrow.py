"""Parquet files and Hugging Face ``datasets`` directories (``Dataset.save_to_disk``) as a site's own data, read
with pyarrow alone (the optional ``[formats]`` extra), so a site need not install ``datasets`` and its stack.

A ``save_to_disk`` directory holds Arrow IPC stream files (``data-*.arrow``, listed in ``state.json``) and
``dataset_info.json``; a Parquet file written by ``datasets`` carries the same information in its schema's
``huggingface`` metadata.  Where that information declares the label column a ``ClassLabel``, its integers are
read as the class names (so ``rotten_tomatoes`` saved to disk has labels ``neg``/``pos``, as the job's
``label_names`` expect).  Only the text and label columns are read; each row becomes a mapping of the two, for
``formats`` to check as it checks a JSON line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedprompt.errors import ConfigError, FileError, quoted

#: The files that make a directory a ``datasets`` one (a single split, and a ``DatasetDict`` of splits).
STATE, INFO, DICT = "state.json", "dataset_info.json", "dataset_dict.json"


def is_datasets_dir(path: Path) -> bool:
    """Whether ``path`` is a directory ``save_to_disk`` wrote (one split or a ``DatasetDict``)."""
    return path.is_dir() and any((path / name).is_file() for name in (STATE, INFO, DICT))


def read_rows(path: Path, text_column: str, label_column: str) -> list[dict[str, Any]]:
    """The text and label of each row of a Parquet file or a ``datasets`` directory, in order; a ``FileError``
    naming the file for anything else (missing, not Parquet or Arrow, without the columns, a ``DatasetDict``
    given where one split is meant)."""
    pa = _pyarrow(path)
    columns = [text_column, label_column]
    try:
        if path.is_dir():
            table, features = _datasets_dir(path, pa)
        else:
            import pyarrow.parquet as pq

            schema = pq.read_schema(path)
            table, features = None, _features(schema.metadata)
            _check_columns(path, schema.names, columns)
            table = pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError, ValueError, KeyError, TypeError, AttributeError) as exc:  # a file's flaw
        kind = "datasets directory" if path.is_dir() else "Parquet file"
        raise FileError(f"dataset file {path}: not a readable {kind} ({str(exc).splitlines()[0][:200]})") from exc
    _check_columns(path, table.schema.names, columns)
    texts = table.column(text_column).to_pylist()
    labels = table.column(label_column).to_pylist()
    names = _class_names(features, label_column)
    if names:
        labels = [names[v] if isinstance(v, int) and 0 <= v < len(names) else v for v in labels]
    return [{text_column: t, label_column: y} for t, y in zip(texts, labels, strict=True)]


def _pyarrow(path: Path) -> Any:
    try:
        import pyarrow
    except ImportError:
        raise ConfigError(f"dataset {path}: reading Parquet and datasets directories needs pyarrow, which is not "
                          "installed; install the formats extra: pip install 'fedprompt[formats]'") from None
    return pyarrow


def _datasets_dir(path: Path, pa: Any) -> tuple[Any, dict[str, Any]]:
    if (path / DICT).is_file():
        splits = json.loads((path / DICT).read_text(encoding="utf-8")).get("splits", [])
        shown = ", ".join(str(s) for s in splits[:8]) if isinstance(splits, list) else ""
        example = f" (e.g. {path / str(splits[0])})" if isinstance(splits, list) and splits else ""
        raise FileError(f"dataset {path} is a DatasetDict of splits ({shown}); give one split's directory{example}")
    if (path / STATE).is_file():
        state = json.loads((path / STATE).read_text(encoding="utf-8"))
        files = [path / str(entry["filename"]) for entry in state.get("_data_files", [])]
    else:
        files = sorted(path.glob("data-*.arrow"))
    if not files:
        raise FileError(f"dataset {path}: no Arrow data files (data-*.arrow) in this datasets directory")
    tables = []
    for file in files:
        with pa.memory_map(str(file)) as source:
            tables.append(pa.ipc.open_stream(source).read_all())
    info = json.loads((path / INFO).read_text(encoding="utf-8")) if (path / INFO).is_file() else {}
    return pa.concat_tables(tables), info.get("features") or {}


def _features(metadata: dict[bytes, bytes] | None) -> dict[str, Any]:
    """The ``datasets`` features a Parquet file's schema metadata declares, if it was written by ``datasets``."""
    raw = (metadata or {}).get(b"huggingface")
    if not raw:
        return {}
    info = json.loads(raw).get("info") or {}
    features = info.get("features") if isinstance(info, dict) else None
    return features if isinstance(features, dict) else {}


def _class_names(features: dict[str, Any], column: str) -> list[str]:
    feature = features.get(column)
    if isinstance(feature, dict) and feature.get("_type") == "ClassLabel":
        names = feature.get("names")
        if isinstance(names, list) and all(isinstance(n, str) for n in names):
            return names
    return []


def _check_columns(path: Path, names: list[str], wanted: list[str]) -> None:
    missing = [c for c in wanted if c not in names]
    if missing:
        shown = ", ".join(quoted(name, 32) for name in names[:8]) + (", ..." if len(names) > 8 else "")
        raise FileError(f"dataset file {path}: no column {' or '.join(quoted(c) for c in missing)} in its columns "
                        f"({shown}); name the text and label columns (--text-column, --label-column)")
