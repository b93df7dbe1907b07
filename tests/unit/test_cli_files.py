"""Every command that reads (or writes) a file the user names, given a missing file and a binary one, run as
``python -m fedprompt``: a non-zero exit and exactly one line on stderr, ``fedprompt: error: ...`` naming the
file, never a traceback.  The errors come from each reading site (``FileError`` and the PKI's and config's
typed errors), not from a catch-all in ``main``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from fedprompt.config import dump_toml
from fedprompt.crypto.pki import CertificateAuthority
from fedprompt.promptfile import save_prompt
from tests.support import refused_in_one_line, run_fedprompt, tiny_job

#: Bytes that are not UTF-8 (0xff never is) and not any format the commands read.
BINARY = b"\xff\xfe\x00" + bytes(range(256)) * 4

#: (id, argv with {f} for the file under test and {tmp} for the test's directory, suffix of the file).
CASES = [
    ("coordinator serve --config", "coordinator serve --config {f}", ".toml"),
    ("participant run --config", "participant run --config {f}", ".toml"),
    ("model serve --config", "model serve --config {f}", ".toml"),
    ("model export --model", "model export --model {f}", ".bin"),
    ("admin create", "admin --insecure create {f}", ".toml"),
    ("admin ca sign --csr", "admin ca sign --dir {tmp}/ca --csr {f} --out {tmp}/signed.crt", ".csr"),
    ("admin ca revoke --cert", "admin ca revoke --dir {tmp}/ca --cert {f}", ".crt"),
    ("admin --key", "admin --ca-cert {tmp}/ca/ca.crt --cert {tmp}/ca/ca.crt --key {f} jobs", ".key"),
    ("coordinator health --cert", "coordinator health --ca-cert {tmp}/ca/ca.crt --cert {f} --key {f}", ".crt"),
    ("predict --prompt", "predict --prompt {f} text", ".safetensors"),
    ("predict --texts", "predict --prompt {tmp}/prompt.safetensors --texts {f}", ".txt"),
    ("data prepare --dataset csv", "data prepare --out {tmp}/data --dataset {f}", ".csv"),
    ("data prepare --dataset jsonl", "data prepare --out {tmp}/data --dataset {f}", ".jsonl"),
    ("simulate --config", "simulate --config {f}", ".toml"),
]
#: Output paths: a regular file where a directory must be (the "binary file" case of a command that writes).
WRITERS = [
    ("admin export --out", "admin --insecure export job --out {f}/prompt.safetensors"),
    ("data prepare --out", "data prepare --out {f} --dataset rotten_tomatoes"),
    ("data prepare --write-job", "data prepare --out {tmp}/data --dataset rotten_tomatoes --write-job {f}/job.toml"),
    ("simulate --report", "simulate --report {f}/report.json"),
    ("bench --report", "bench dp --report {f}/report.json"),
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cli-files")
    CertificateAuthority.init(tmp / "ca")
    save_prompt(tmp / "prompt.safetensors", np.zeros(8, np.float32), dump_toml(tiny_job(tmp)), 1, "job")
    return tmp


def fedprompt(argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    """``python -m fedprompt ARGV`` from this checkout, with nothing listening where a coordinator could be."""
    return run_fedprompt(argv.split(), stdin, {"FEDPROMPT_COORDINATOR": "127.0.0.1:9"})


@pytest.mark.parametrize(("argv", "suffix"), [(a, s) for _, a, s in CASES], ids=[i for i, _, _ in CASES])
@pytest.mark.parametrize("kind", ["missing", "binary"])
def test_each_reading_command_refuses_a_missing_or_binary_file_in_one_line(
        workdir: Path, tmp_path: Path, argv: str, suffix: str, kind: str) -> None:
    path = tmp_path / f"{kind}{suffix}"
    if kind == "binary":
        path.write_bytes(BINARY)
    refused_in_one_line(fedprompt(argv.format(f=path, tmp=workdir)), path.name)


@pytest.mark.parametrize("argv", [a for _, a in WRITERS], ids=[i for i, _ in WRITERS])
def test_each_writing_command_refuses_an_output_under_a_regular_file_before_any_work(
        workdir: Path, tmp_path: Path, argv: str) -> None:
    path = tmp_path / "binary.dat"
    path.write_bytes(BINARY)
    refused_in_one_line(fedprompt(argv.format(f=path, tmp=tmp_path)), path.name)


def test_a_latin1_csv_and_binary_stdin_name_what_is_not_utf8(workdir: Path, tmp_path: Path) -> None:
    latin1 = tmp_path / "export.csv"
    latin1.write_bytes("text,label\nun film tr\u00e8s r\u00e9ussi,pos\nbad,neg\n".encode("latin-1"))
    line = refused_in_one_line(fedprompt(f"data prepare --out {tmp_path}/data --dataset {latin1}"), "export.csv")
    assert "is not UTF-8 text (byte 0xe8 on line 2, at offset 21); save it as UTF-8 or name its encoding" in line
    line = refused_in_one_line(fedprompt(f"predict --prompt {workdir}/prompt.safetensors", stdin=BINARY),
                               "standard input")
    assert "not UTF-8" in line
