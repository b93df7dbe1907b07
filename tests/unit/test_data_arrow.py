"""Parquet files and ``datasets`` directories (``save_to_disk``) as a site's data, through the real command line
(``python -m fedprompt data prepare``): read by pyarrow alone through the same ``DataFormat`` path as CSV, so the
same columns, bad rows, duplicates and summary; ``ClassLabel`` integers read as their names; a directory written
by the real ``datasets`` library; anything else (a DatasetDict, a binary or missing file, pyarrow not installed)
refused in one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tests.support import run_fedprompt, without_packages

TWEETS = ["what a film", "so dull", "loved it", "so dull", "awful plot", "great cast", "meh"]
LABELS = [1, 0, 1, 0, 0, 1, 0]


def prepare(data: Path, *flags: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = run_fedprompt(["data", "prepare", "--dataset", str(data), "--out", str(data.parent / "out"),
                            "--participants", "1", "--test-size", "1", "--text-column", "tweet", "--label-column",
                            "sentiment", *flags], env=env, timeout=300)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.returncode, result.stdout, result.stderr


def examples(out: Path) -> set[tuple[str, str]]:
    rows = [json.loads(line) for split in ("participant-0/train.jsonl", "test.jsonl")
            for line in (out / split).read_text(encoding="utf-8").splitlines()]
    return {(row["text"], row["label"]) for row in rows}


def class_label_dataset() -> Any:
    from datasets import ClassLabel, Dataset, Features, Value

    features = Features({"tweet": Value("string"), "sentiment": ClassLabel(names=["neg", "pos"]),
                         "id": Value("int64")})
    return Dataset.from_dict({"tweet": TWEETS, "sentiment": LABELS, "id": list(range(len(TWEETS)))},
                             features=features)


def test_a_directory_written_by_datasets_save_to_disk_reads_class_names(tmp_path: Path) -> None:
    class_label_dataset().save_to_disk(str(tmp_path / "tweets"))
    code, out, err = prepare(tmp_path / "tweets")
    assert code == 0 and err == "", err
    assert f"{tmp_path / 'tweets'}: 7 rows read; dropped 0 without a valid label, 0 empty texts, 1 repeated texts" in out
    assert "labels (2): neg, pos" in out
    assert examples(tmp_path / "out") == {(t, ("neg", "pos")[y]) for t, y in zip(TWEETS, LABELS, strict=True)}


def test_a_parquet_file_written_by_datasets_reads_class_names(tmp_path: Path) -> None:
    class_label_dataset().to_parquet(str(tmp_path / "tweets.parquet"))
    code, out, err = prepare(tmp_path / "tweets.parquet")
    assert code == 0 and err == "" and "labels (2): neg, pos" in out, err
    assert examples(tmp_path / "out") == {(t, ("neg", "pos")[y]) for t, y in zip(TWEETS, LABELS, strict=True)}


def test_a_parquet_files_bad_rows_and_conflicts_are_counted_as_a_csvs_are(tmp_path: Path) -> None:
    data = tmp_path / "export.parquet"
    pq.write_table(pa.table({"tweet": ["good", "bad", "good", "odd", "odd", None, "fine", ""],
                             "sentiment": ["pos", "neg", "pos", "pos", "neg", "neg", None, "pos"]}), data)
    code, _, err = prepare(data)
    [line] = err.strip().splitlines()
    assert code == 2 and line.startswith(f"fedprompt: error: dataset file {data}: ") and line.endswith("2 of 8 rows have no valid label in column 'sentiment' (rows 6, 7); pass --skip-bad-rows "
                         "to drop these rows")
    code, out, err = prepare(data, "--skip-bad-rows")
    assert code == 0, err
    assert (f"{data}: 8 rows read; dropped 2 without a valid label (rows 6, 7), 1 empty texts, 1 repeated texts "
            "(the first kept), 2 rows of 1 texts given different labels (none kept); 2 examples kept") in out
    assert examples(tmp_path / "out") == {("good", "pos"), ("bad", "neg")}


def test_a_parquet_file_without_the_columns_names_them(tmp_path: Path) -> None:
    data = tmp_path / "other.parquet"
    pq.write_table(pa.table({"text": ["a"], "label": ["pos"]}), data)
    code, _, err = prepare(data)
    assert code == 2 and err.strip().endswith("no column 'tweet' or 'sentiment' in its columns ('text', 'label'); "
                                              "name the text and label columns (--text-column, --label-column)")


def test_a_datasetdict_directory_asks_for_one_split(tmp_path: Path) -> None:
    from datasets import DatasetDict

    dataset = class_label_dataset()
    DatasetDict({"train": dataset, "test": dataset}).save_to_disk(str(tmp_path / "dict"))
    code, _, err = prepare(tmp_path / "dict")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"is a DatasetDict of splits (train, test); give one split's directory (e.g. {tmp_path / 'dict' / 'train'})" \
        in err


def test_a_binary_file_a_missing_file_and_a_plain_directory_are_refused_in_one_line(tmp_path: Path) -> None:
    binary = tmp_path / "photo.parquet"
    binary.write_bytes(bytes(range(256)) * 8)
    plain = tmp_path / "folder"
    plain.mkdir()
    for data, says in ((binary, "not a readable Parquet file"), (tmp_path / "missing.parquet", "not a readable"),
                       (plain, "is a directory but not a datasets one")):
        code, _, err = prepare(data)
        assert code == 2 and len(err.strip().splitlines()) == 1 and says in err, err


def test_without_pyarrow_a_parquet_file_is_refused_naming_the_extra(tmp_path: Path) -> None:
    data = tmp_path / "tweets.parquet"
    pq.write_table(pa.table({"tweet": ["a"], "sentiment": ["pos"]}), data)
    code, _, err = prepare(data, env=without_packages(tmp_path / "site", "pyarrow"))
    assert code == 2 and err.strip().splitlines() == [
        f"fedprompt: error: dataset {data}: reading Parquet and datasets directories needs pyarrow, which is not "
        "installed; install the formats extra: pip install 'fedprompt[formats]'"]


def test_a_job_written_from_a_datasets_directory_runs_in_simulate(tmp_path: Path, tiny_encoder_dir: Path) -> None:
    from datasets import ClassLabel, Dataset, Features, Value

    words = {"pos": ("good", "great", "lovely"), "neg": ("bad", "awful", "dull")}
    labels = [k % 2 for k in range(40)]
    Dataset.from_dict({"tweet": [f"film {k} was {words[('neg', 'pos')[y]][k % 3]}" for k, y in enumerate(labels)],
                       "sentiment": labels},
                      features=Features({"tweet": Value("string"), "sentiment": ClassLabel(names=["neg", "pos"])})
                      ).save_to_disk(str(tmp_path / "tweets"))
    code, out, err = prepare(tmp_path / "tweets", "--participants", "2", "--test-size", "8", "--write-job",
                             str(tmp_path / "job.toml"), "--model", str(tiny_encoder_dir))
    assert code == 0 and err == "", err
    result = run_fedprompt(["simulate", "--config", str(tmp_path / "job.toml"), "--no-progress", "--set",
                            "job.rounds=1"], timeout=600)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"{tmp_path / 'tweets'}: 40 rows read" in result.stdout and "round 1: accuracy " in result.stdout
