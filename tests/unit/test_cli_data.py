"""Data a user brings, through the real command line (``python -m fedprompt data prepare``, then ``simulate``):
carriage returns, rows without labels, other column names, Latin-1, duplicates and empty texts each end in
either a summary that counts what was dropped or one ``fedprompt: error: ...`` line and exit 2, never a
traceback; and a job written by ``data prepare --write-job`` runs in ``simulate`` without editing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support import refused_in_one_line, run_fedprompt, toy_job


def prepare(data: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return run_fedprompt(["data", "prepare", "--dataset", str(data), "--out", str(data.parent / "out"),
                          "--participants", "1", "--test-size", "1", *flags])


def prepared(data: Path, *flags: str) -> str:
    """``data prepare``'s summary, after checking it succeeded and printed nothing on stderr."""
    result = prepare(data, *flags)
    assert result.returncode == 0 and result.stderr == "", result.stderr[-2000:]
    return result.stdout


def refused(data: Path, *flags: str, naming: str = "") -> str:
    """The one error line of a refused ``data prepare`` (exit 2), naming the file unless it names ``naming``."""
    result = prepare(data, *flags)
    assert result.returncode == 2
    return refused_in_one_line(result, naming or data.name)


def written(data: Path, split: str = "participant-0/train.jsonl") -> list[dict[str, str]]:
    lines = (data.parent / "out" / split).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_carriage_returns_inside_quoted_texts_are_text(tmp_path: Path) -> None:
    data = tmp_path / "quoted.csv"
    data.write_bytes(b'text,label\r\n"one\rtwo",pos\r\n"three\r\nfour",neg\r\n"five, six",neg\r\n')
    out = prepared(data)
    assert "quoted.csv: 3 rows read; dropped 0 without a valid label" in out and "labels (2): neg, pos" in out
    texts = {row["text"] for row in written(data) + written(data, "test.jsonl")}
    assert texts == {"one\rtwo", "three\r\nfour", "five, six"}


def test_a_bare_carriage_return_that_splits_a_row_is_refused_with_its_line(tmp_path: Path) -> None:
    data = tmp_path / "export.csv"
    data.write_bytes(b"text,label\ngood film,pos\nbroken\rrow,neg\nbad film,neg\nnice film,pos\n")
    line = refused(data)
    assert line == (f"fedprompt: error: dataset file {data}: 1 of 5 rows have no valid label in column 'label' "
                    "(line 3); a line break or carriage return inside an unquoted text splits its row, so quote "
                    "such texts, or pass --skip-bad-rows to drop these rows")
    out = prepared(data, "--skip-bad-rows")
    assert "export.csv: 5 rows read; dropped 1 without a valid label (line 3), 0 empty texts" in out
    assert "labels (2): neg, pos" in out and "None" not in out


def test_rows_without_a_label_are_counted_with_their_first_lines(tmp_path: Path) -> None:
    data = tmp_path / "labels.csv"
    rows = [f"text {i},{'' if i % 3 == 0 else ('pos' if i % 2 else 'neg')}" for i in range(30)]
    data.write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    assert "10 of 30 rows have no valid label in column 'label' (lines 2, 5, 8, 11, 14, ...)" in refused(data)
    assert "30 rows read; dropped 10 without a valid label (lines 2, 5, 8, 11, 14, ...)" in prepared(
        data, "--skip-bad-rows")


def test_other_column_names_are_named_by_flags(tmp_path: Path) -> None:
    data = tmp_path / "tweets.csv"
    data.write_text("id,tweet,sentiment\n1,what a day,pos\n2,what a mess,neg\n3,so good,pos\n", encoding="utf-8")
    assert refused(data).endswith("tweets.csv: no column 'text' or 'label' in its header ('id', 'tweet', "
                                  "'sentiment'); name the text and label columns (--text-column, --label-column)")
    assert "3 examples kept" in prepared(data, "--text-column", "tweet", "--label-column", "sentiment")
    lines = tmp_path / "tweets.jsonl"
    lines.write_text('{"tweet": "what a day", "sentiment": "pos"}\n{"tweet": "a mess", "sentiment": "neg"}\n'
                     '{"tweet": "so good", "sentiment": "pos"}\n', encoding="utf-8")
    assert "no record has a text in column 'text'" in refused(lines)
    assert "3 examples kept" in prepared(lines, "--text-column", "tweet", "--label-column", "sentiment")
    assert refused(lines, "--label-column", "text", naming="format.label_column").endswith(
        "must differ from text_column, both are 'text'")


def test_latin1_is_refused_with_its_offset_or_read_when_named(tmp_path: Path) -> None:
    data = tmp_path / "latin1.csv"
    data.write_bytes("text,label\nun film tr\u00e8s r\u00e9ussi,pos\nrat\u00e9,neg\n".encode("latin-1"))
    assert refused(data).endswith("latin1.csv is not UTF-8 text (byte 0xe8 on line 2, at offset 21); save it as "
                                  "UTF-8 or name its encoding (--encoding, e.g. latin-1)")
    assert f"{data} (read as latin-1): 2 rows read" in prepared(data, "--encoding", "latin-1")
    texts = {row["text"] for row in written(data) + written(data, "test.jsonl")}
    assert texts == {"un film tr\u00e8s r\u00e9ussi", "rat\u00e9"}
    wide = tmp_path / "wide.csv"
    wide.write_bytes("text,label\nna\u00efve,pos\ncr\u00e8me,neg\n".encode("utf-16"))
    assert refused(wide, "--encoding", "utf-8").endswith(
        "wide.csv is not UTF-8 text (byte 0xff on line 1, at offset 0); it starts with a UTF-16 byte-order mark, so "
        "name that encoding (--encoding utf-16, or auto)")
    assert "2 examples kept" in prepared(wide, "--encoding", "utf-16")


@pytest.mark.parametrize(("codec", "named"), [("utf-16-le", "utf-16"), ("utf-16-be", "utf-16"),
                                              ("utf-32-le", "utf-32"), ("utf-8", "utf-8")])
def test_auto_reads_what_a_byte_order_mark_names(tmp_path: Path, codec: str, named: str) -> None:
    data = tmp_path / "marked.csv"
    text = "text,label\nna\u00efve,pos\ncr\u00e8me,neg\n"
    data.write_bytes("\ufeff".encode(codec) + text.encode(codec))
    summary = prepared(data)  # --encoding auto, the default
    assert f"{data} (read as {named} (byte-order mark)): 2 rows read" in summary
    assert {row["text"] for row in written(data) + written(data, "test.jsonl")} == {"na\u00efve", "cr\u00e8me"}


def test_a_binary_file_is_refused_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "photo.csv"
    data.write_bytes(bytes(range(256)) * 4)
    assert "photo.csv is not UTF-8 text (byte 0x80 on line 2, at offset 128)" in refused(data)


def test_the_encoding_must_be_one_python_knows(tmp_path: Path) -> None:
    data = tmp_path / "latin1.csv"
    data.write_bytes("text,label\nrat\u00e9,neg\n".encode("latin-1"))
    assert refused(data, "--encoding", "klingon", naming="format.encoding").endswith(
        "'klingon' is not a text encoding (e.g. utf-8, latin-1, cp1252, utf-16)")


def test_duplicates_conflicts_and_empty_texts_are_dropped_and_counted(tmp_path: Path) -> None:
    data = tmp_path / "dupes.csv"
    rows = [f"review {i},{'pos' if i % 2 else 'neg'}" for i in range(20)]
    rows += ["review 3,pos", "review 3,pos", "review 4,neg", "  ,pos", '"",neg', "twice,pos", "twice,neg"]
    data.write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    out = prepared(data, "--test-size", "5")
    assert ("dupes.csv: 27 rows read; dropped 0 without a valid label, 2 empty texts, 3 repeated texts (the first "
            "kept), 2 rows of 1 texts given different labels (none kept); 20 examples kept") in out
    train, test = written(data), written(data, "test.jsonl")
    texts = [row["text"] for row in train + test]
    assert len(texts) == len(set(texts)) == 20 and "twice" not in texts and "" not in texts
    count = {(split, y): sum(row["label"] == y for row in rows) for split, rows in (("train", train), ("test", test))
             for y in ("neg", "pos")}
    assert (f"participant-0: train 15 (neg {count['train', 'neg']}, pos {count['train', 'pos']}), "
            f"test 5 (neg {count['test', 'neg']}, pos {count['test', 'pos']}), unlabelled 0") in out


def test_a_written_job_runs_in_simulate_without_edits(tmp_path: Path, tiny_encoder_dir: Path) -> None:
    data, job, out = toy_job(tmp_path, tiny_encoder_dir)
    assert f"job written to {job}; run it with: fedprompt simulate --config {job}" in out
    result = run_fedprompt(["simulate", "--config", str(job), "--report", str(tmp_path / "report.json")], timeout=600)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"{data}: 60 rows read; dropped 0 without a valid label" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["state"] == "done" and sorted(report["final_by_participant"]) == ["site-0", "site-1"]


def test_a_participant_refuses_its_own_bad_data_by_its_format_flags(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "train.jsonl").write_text('{"tweet": "fine", "sentiment": "pos"}\n{"tweet": "no label"}\n',
                                      encoding="utf-8")
    result = run_fedprompt(["participant", "run", "--insecure", "--job", "j", "--coordinator", "127.0.0.1:9",
                            "--data-dir", str(site), "--text-column", "tweet", "--label-column", "sentiment"])
    assert result.returncode == 2
    assert refused_in_one_line(result, "train.jsonl").endswith(
        "1 of 2 rows have no valid label in column 'sentiment' (line 2); pass --skip-bad-rows to drop these rows")
