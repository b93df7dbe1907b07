"""A participant facing a coordinator that is not there retries, then says clearly what is wrong."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from fedprompt.participant.grpc_link import CoordinatorUnreachable, GrpcLink
from tests.support import fedprompt_process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_link_retries_then_names_the_address() -> None:
    target = f"127.0.0.1:{free_port()}"
    link = GrpcLink(target, "site-a", retry_initial_s=0.05, retry_max_s=0.2, give_up_after_s=1.0, rpc_timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(CoordinatorUnreachable, match=f"coordinator at {target} unreachable"):
        link.describe("job")
    assert time.monotonic() - started >= 1.0
    link.close()


def test_daemon_exits_with_a_clear_message(tmp_path: Path) -> None:
    data = tmp_path / "site"
    data.mkdir()
    (data / "train.jsonl").write_text('{"text": "fine", "label": "pos"}\n')
    log = tmp_path / "p.log"
    proc = fedprompt_process(["participant", "run", "--insecure", "--coordinator", f"127.0.0.1:{free_port()}", "--job", "j",
                              "--data-dir", str(data), "--no-progress", "--set", "participant.give_up_after_s=1.0",
                              "--set", "participant.retry_initial_s=0.1"], log)
    assert proc.wait(60) == 2
    text = log.read_text()
    assert "coordinator not reachable, retrying" in text and "fedprompt: error: coordinator at" in text
