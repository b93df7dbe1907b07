"""Hostile job configs sent to a real coordinator: each is refused with INVALID_ARGUMENT and a one-line reason, no
traceback reaches the server's log, nothing is stored, and the coordinator goes on serving; a legitimate name of
60 "é" (120 bytes) then runs a round end to end, looked up by that name over gRPC."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc
import pytest
import structlog

from fedprompt.app.admin_client import AdminClient
from fedprompt.app.synthetic import SyntheticParticipant
from fedprompt.config import MAX_TOML_BYTES, dump_toml
from fedprompt.participant.grpc_link import GrpcLink
from fedprompt.protocol import TaskKind
from fedprompt.v1 import admin_pb2
from tests.support import LiveCoordinator, tiny_job, wait_for

VALID = "[job]\nname = 'hostile'\nallowed_participants = ['*']\n"
#: (id, CreateJob's config text, how the refusal's reason starts)
HOSTILE = [
    ("nested-arrays", "x = " + "[" * 5000 + "]" * 5000, "job config: invalid TOML: arrays or inline tables nested"),
    ("nested-tables", VALID + "x = " + "{a = " * 3000 + "1" + "}" * 3000, "job config: invalid TOML: arrays or"),
    # refused at the boundary by the request's length bound (wire.bounds), before any parsing
    ("over-cap", VALID + "# " + "x" * MAX_TOML_BYTES, "CreateJobRequest.config_toml: 1048630 characters"),
    ("3.9MB", VALID + "# padding\n" * 390_000, "CreateJobRequest.config_toml: 3900052 characters"),
    # within the bound in characters, over the codec's cap in UTF-8 bytes
    ("multibyte-over-cap", VALID + "# " + "\u00e9" * 600_000, "job config: TOML text of"),
    ("truncated", VALID + "[train]\nlr =", "job config: invalid TOML: Invalid value (at end of document)"),
    ("binary", "\x00\x01\x02\xff\xfe", "job config: invalid TOML: Invalid statement (at line 1, column 1)"),
    ("duplicate-key", VALID + "[model]\nmax_length = 8\nmax_length = 9\n", "job config: invalid TOML: Cannot overwrite"),
    ("long-integer", VALID + "seed = " + "9" * 5000, "job config: invalid TOML: an integer has too many digits (at line 4)"),
    ("deadline-inf", VALID + "round_deadline_s = inf", "job.round_deadline_s: must be in (0, 604800]"),
    ("per-round-1e12", VALID + "participants_per_round = 1000000000000", "job.participants_per_round: must be in"),
    ("seed-2**70", VALID + f"seed = {2**70}", "job.seed: must be a 64-bit integer"),
    ("epsilon-nan", VALID + "[dp]\nepsilon = nan", "dp.epsilon: must be in (0, 1000] or inf, got nan"),
    ("name-newline", VALID.replace("'hostile'", '"evil\\nINFO fake log line"'), "job.name: "),
    ("name-ansi", VALID.replace("'hostile'", '"\\u001b[31mred"'), "job.name: "),
    ("name-bell", VALID.replace("'hostile'", '"ding\\u0007"'), "job.name: "),
    ("name-path", VALID.replace("'hostile'", "'../../etc/cron.d/x'"), "job.name: "),
    ("name-long", VALID.replace("'hostile'", "'" + "é" * 65 + "'"), "job.name: must be at most 128 bytes"),
]
NAME = "é" * 60


def test_hostile_configs_are_refused_and_a_unicode_name_runs_a_round(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)  # gRPC logs an exception a servicer lets escape, with its traceback
    with structlog.testing.capture_logs() as logs, LiveCoordinator(tmp_path / "coord") as live:
        admin = AdminClient(live.target)
        for what, text, reason in HOSTILE:
            with pytest.raises(grpc.RpcError) as info:
                admin.stub.CreateJob(admin_pb2.CreateJobRequest(config_toml=text), timeout=30)
            details = info.value.details() or ""
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (what, info.value.code(), details)
            assert details.startswith(reason) and "\n" not in details and len(details) < 300, (what, details)
        assert admin.jobs() == [] and live.call(live.server.store.jobs) == []  # nothing stored

        # still serving: a legitimate job with a two-byte-letter name, 120 bytes, joined by name and run
        job_id = admin.create_job(dump_toml(tiny_job(tmp_path, name=NAME, rounds=1, participants_per_round=2,
                                                     min_participants=2)))
        links = [GrpcLink(live.target, n, give_up_after_s=5) for n in "ab"]
        people = [SyntheticParticipant(link, n, NAME, 8) for link, n in zip(links, "ab", strict=True)]
        for p in people:
            assert p.join().job_id == job_id
        admin.start(job_id)
        for p in people:
            while p.step(1.0).kind is not TaskKind.TRAIN:
                pass
        wait_for(lambda: admin.status(NAME).global_version == 1, 10, what="round 1 to close")
        view = admin.status(job_id)
        assert (view.name, view.state) == (NAME, "done") and [j.name for j in admin.jobs()] == [NAME]
        for link in links:
            link.close()
        admin.close()
    assert [(r.name, r.getMessage()) for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []
    rejected = [entry for entry in logs if entry["event"] == "[AdminService.CreateJob] rejected"]
    assert [entry["status"] for entry in rejected] == ["INVALID_ARGUMENT"] * len(HOSTILE)
    assert all(entry["reason"].isprintable() for entry in rejected)  # no newline, ESC or BEL reaches a log line
