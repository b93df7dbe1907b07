"""Caller strings at a real mTLS coordinator: an oversized value in any string field of any participant or
admin request is refused with INVALID_ARGUMENT naming the field (never RESOURCE_EXHAUSTED because the value
came back in the status), and neither the status nor the rejection's log line carries the value."""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message_factory import GetMessageClass
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from fedprompt.app.admin_client import AdminClient
from fedprompt.config import dump_toml
from fedprompt.v1 import admin_pb2, participant_pb2
from fedprompt.wire import bounds
from fedprompt.wire.channel import open_channel
from fedprompt.wire.rpc import MAX_STATUS_BYTES
from tests.support import (
    COORDINATOR_METHODS,
    LiveCoordinator,
    ThrowawayPki,
    call_method,
    string_fields,
    tiny_job,
    with_string,
)

FIELDS = [(method, path, field) for method in COORDINATOR_METHODS for path, field in string_fields(method.input_type)]


def rejections(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    """The captured ``[Service.Method] rejected`` lines."""
    return [entry for entry in logs if str(entry.get("event", "")).endswith(" rejected")]


@pytest.fixture
def coordinator(tmp_path: Path):
    pki = ThrowawayPki(tmp_path / "pki")
    with LiveCoordinator(tmp_path / "coord", pki) as live:
        admin = AdminClient(live.target, pki.tls("admin:alice"))
        job_id = admin.create_job(dump_toml(tiny_job(tmp_path, allowed_participants=("participant:a",))))
        admin.close()
        channels = {role: open_channel(live.target, pki.tls(who))
                    for role, who in (("ParticipantService", "participant:a"), ("AdminService", "admin:alice"))}
        yield live, job_id, channels
        for channel in channels.values():
            channel.close()


def test_the_reported_cases_are_invalid_argument_with_a_short_status_and_log_line(coordinator) -> None:
    live, job_id, channels = coordinator
    share, release = (next(m for m in COORDINATOR_METHODS if m.name == name) for name in ("ShareKey", "ReleaseParticipant"))
    with capture_logs(processors=[merge_contextvars]) as logs:
        code, details = call_method(channels["ParticipantService"], share,
                                    participant_pb2.ShareKeyRequest(job_id=job_id, recipient_id="r" * 1_000_000))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert details == "ShareKeyRequest.recipient_id: 1000000 characters, at most 128 allowed"
        code, details = call_method(channels["AdminService"], release,
                                    admin_pb2.ReleaseParticipantRequest(job_id=job_id, participant_id="p" * 10_000))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert details == "ReleaseParticipantRequest.participant_id: 10000 characters, at most 128 allowed"
    lines = rejections(logs)
    assert [entry["rpc"] for entry in lines] == ["ParticipantService.ShareKey", "AdminService.ReleaseParticipant"]
    for entry in lines:
        assert entry["status"] == "INVALID_ARGUMENT" and "peer" in entry
        assert len(repr(entry)) < 500 and "rrrrrrrrrr" not in repr(entry) and "pppppppppp" not in repr(entry)


@pytest.mark.parametrize(("method", "path", "field"), FIELDS,
                         ids=[f"{m.name}.{p}" for m, p, _ in FIELDS])
def test_every_string_field_of_every_request_is_bounded(coordinator, method, path: str, field: str) -> None:
    live, job_id, channels = coordinator
    limit = bounds.LIMITS[field]
    request = GetMessageClass(method.input_type)()
    if "job_id" in request.DESCRIPTOR.fields_by_name and field != "job_id":
        request.job_id = job_id
    with capture_logs(processors=[merge_contextvars]) as logs:
        code, details = call_method(channels[method.containing_service.name], method,
                                    with_string(request, path, "\u00e9" * (limit + 1000)))
    assert code is grpc.StatusCode.INVALID_ARGUMENT, details
    assert details == f"{request.DESCRIPTOR.name}.{path}: {limit + 1000} characters, at most {limit} allowed"
    assert [len(str(entry["reason"])) < 200 and "\u00e9" * 10 not in repr(entry) for entry in rejections(logs)] == [True]


def test_a_message_quoting_a_huge_value_is_clipped_in_status_and_log(coordinator) -> None:
    """The last bound: whatever an error quotes (here the config loader echoes a value it refuses), the status
    and the logged reason stay within ``MAX_STATUS_BYTES``, so the caller gets INVALID_ARGUMENT and can read it."""
    live, job_id, channels = coordinator
    create = next(m for m in COORDINATOR_METHODS if m.name == "CreateJob")
    toml = dump_toml(tiny_job(Path("model"))).replace("rounds = 2", 'rounds = "' + "\u00e9\u20ac" * 200_000 + '"')
    with capture_logs(processors=[merge_contextvars]) as logs:
        code, details = call_method(channels["AdminService"], create, admin_pb2.CreateJobRequest(config_toml=toml))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "job.rounds" in details
    assert len(details.encode()) <= MAX_STATUS_BYTES
    [entry] = rejections(logs)
    assert entry["rpc"] == "AdminService.CreateJob" and len(str(entry["reason"]).encode()) <= MAX_STATUS_BYTES
