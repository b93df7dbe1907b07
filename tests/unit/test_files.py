"""Files a user names: ``fedprompt.files`` and the readers built on it refuse whatever is not their format with a
``FileError`` naming the file (missing, not UTF-8, not a table, not a prompt file, an output under a regular
file), and a prompt file cut anywhere is refused the same way, never with another exception."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedprompt.config import dump_toml
from fedprompt.data.datasets import load_file
from fedprompt.errors import ConfigError, FileError
from fedprompt.files import read_text, writable
from fedprompt.promptfile import load_prompt, save_prompt
from tests.support import tiny_job


def test_read_text_names_the_file_and_where_it_is_not_utf8(tmp_path: Path) -> None:
    assert issubclass(FileError, ConfigError)  # the CLI, servicers and daemons already refuse ConfigError by name
    with pytest.raises(FileError, match=r"^cannot read job config .*nope\.toml: No such file or directory$"):
        read_text(tmp_path / "nope.toml", "job config")
    with pytest.raises(FileError, match=r"cannot read job config .*: Is a directory"):
        read_text(tmp_path, "job config")
    (tmp_path / "latin1.toml").write_bytes(b'[job]\nname = "caf\xe9"\n')
    with pytest.raises(FileError, match=r"latin1\.toml is not UTF-8 text \(byte 0xe9 on line 2, at offset 17\); save it as UTF-8"):
        read_text(tmp_path / "latin1.toml", "job config")


def test_writable_refuses_an_output_under_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert writable(tmp_path / "new" / "deeper" / "out.json", "--report") == tmp_path / "new" / "deeper" / "out.json"
    with pytest.raises(FileError, match="file is not a directory"):
        writable(tmp_path / "file" / "out.json", "--report")
    with pytest.raises(FileError, match="exists and is not a directory"):
        writable(tmp_path / "file", "--out", directory=True)
    with pytest.raises(FileError, match="is a directory; give a file name"):
        writable(tmp_path, "--out")
    assert writable(tmp_path, "--out", directory=True) == tmp_path


@pytest.mark.parametrize(("name", "data", "message"), [
    ("a.jsonl", b'{"text": "ok", "label": "pos"}\n[1, 2]\n', r"1 of 2 rows have no valid label in column 'label' \(line 2\)"),
    ("b.jsonl", b'{"text": {"nested": 1}, "label": "pos"}\n', r"no record has a text in column 'text'"),
    ("c.jsonl", b'{"text": "ok", "label": "pos"}\n{oops\n', r"c\.jsonl:2: invalid JSON"),
    ("d.csv", b"text,label\n" + b"x" * 200_000 + b",pos\n", r"d\.csv: not a CSV table at line 2 \(field larger than"),
    ("e.csv", b"text,label\nno label here\n", r"e\.csv: no row has a valid label in column 'label'; name the label column"),
    ("f.tsv", b"text\tlabel\nt\xe9l\xe9\tpos\n", r"f\.tsv is not UTF-8 text \(byte 0xe9 on line 2, at offset 12\)"),
    ("g.txt", b"text,label\n", r"g\.txt: unsupported format '\.txt'"),
    ("h.csv", b'text,label\n"multi\nline",pos\n"x\r\ny",neg\nno label\nok,neg\n', r"1 of 4 rows .* \(line 6\)"),
])
def test_a_dataset_that_is_not_a_table_is_refused_by_name(tmp_path: Path, name: str, data: bytes, message: str) -> None:
    (tmp_path / name).write_bytes(data)
    with pytest.raises(FileError, match=message):
        load_file(tmp_path / name)


def test_a_dataset_in_utf8_still_loads_with_separators_inside_texts(tmp_path: Path) -> None:
    (tmp_path / "ok.jsonl").write_text('{"text": "a\\u2028b\u2028c", "label": "pos"}\n\n', encoding="utf-8")
    (tmp_path / "ok.csv").write_text('text,label\n"x, y\nz",neg\n', encoding="utf-8")
    assert [(e.text, e.label) for e in load_file(tmp_path / "ok.jsonl").examples] == [("a\u2028b\u2028c", "pos")]
    assert [(e.text, e.label) for e in load_file(tmp_path / "ok.csv").examples] == [("x, y\nz", "neg")]


@pytest.fixture(scope="module")
def prompt_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("prompt") / "p.safetensors"
    save_prompt(path, np.arange(8, dtype=np.float32), dump_toml(tiny_job(path.parent)), 3, "job")
    return path.read_bytes()


def test_prompt_files_round_trip_and_refuse_what_they_are_not(tmp_path: Path, prompt_bytes: bytes) -> None:
    (tmp_path / "p.safetensors").write_bytes(prompt_bytes)
    vector, config = load_prompt(tmp_path / "p.safetensors")
    assert vector.tolist() == list(range(8)) and "[job]" in config
    with pytest.raises(FileError, match="cannot read prompt file .*: No such file or directory"):
        load_prompt(tmp_path / "missing.safetensors")
    with pytest.raises(FileError, match="cannot read prompt file .*: is a directory"):
        load_prompt(tmp_path)
    from safetensors.numpy import save_file

    save_file({"prompt_vector": np.zeros((2, 2), np.float32)}, str(tmp_path / "m.safetensors"),
              metadata={"job_config_toml": ""})
    with pytest.raises(FileError, match=r"finite 1-D float32 vector, got float32 \[2, 2\]"):
        load_prompt(tmp_path / "m.safetensors")
    save_file({"weights": np.zeros(2, np.float32)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(FileError, match="is not a fedprompt prompt file"):
        load_prompt(tmp_path / "w.safetensors")
    with pytest.raises(FileError, match=r"^prompt file .*x\.safetensors: .*p\.safetensors is not a directory$"):
        save_prompt(tmp_path / "p.safetensors" / "x.safetensors", vector, config, 1, "job")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_a_prompt_file_cut_or_flipped_anywhere_is_a_file_error(tmp_path: Path, prompt_bytes: bytes,
                                                               data: st.DataObject) -> None:
    raw = bytearray(prompt_bytes[: data.draw(st.integers(0, len(prompt_bytes)))])
    if raw and data.draw(st.booleans()):
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    (tmp_path / "cut.safetensors").write_bytes(bytes(raw))
    try:
        load_prompt(tmp_path / "cut.safetensors")
    except FileError:
        pass
