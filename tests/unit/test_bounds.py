"""How caller-controlled strings are bounded: every string field of every participant and admin request has a
named limit (``wire.bounds``), the walk reaches nested, repeated and map fields, and the two message helpers
(``errors.quoted`` for a caller's value, ``errors.clip`` for a whole message) never exceed what they promise."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedprompt.errors import InvalidRequest, clip, quoted
from fedprompt.v1 import admin_pb2, common_pb2, participant_pb2
from fedprompt.wire import bounds
from tests.support import COORDINATOR_METHODS, string_fields, with_string

REQUEST_STRINGS = sorted({(m.input_type.name, *f) for m in COORDINATOR_METHODS for f in string_fields(m.input_type)})


def test_every_request_string_field_has_a_named_limit() -> None:
    assert len(REQUEST_STRINGS) >= 27  # the walk found them: job refs, ids, encoding, metric names, reason, TOML
    unnamed = [f"{message}.{path}" for message, path, field in REQUEST_STRINGS if field not in bounds.LIMITS]
    assert unnamed == [], "add these fields to wire.bounds.LIMITS"
    assert bounds.LIMITS["recipient_id"] == bounds.LIMITS["participant_id"] == bounds.IDENTITY_CHARS == 128


@pytest.mark.parametrize(("message", "path", "field"), REQUEST_STRINGS,
                         ids=[f"{m}.{p}" for m, p, _ in REQUEST_STRINGS])
def test_each_field_is_refused_one_past_its_limit_and_named(message: str, path: str, field: str) -> None:
    limit = bounds.LIMITS[field]
    module = participant_pb2 if hasattr(participant_pb2, message) else admin_pb2
    for length, refused in ((limit, False), (limit + 1, True)):
        request = with_string(getattr(module, message)(), path, "v" * length)
        if not refused:
            bounds.check(request)
            continue
        with pytest.raises(InvalidRequest) as info:
            bounds.check(request)
        assert str(info.value) == f"{message}.{path}: {limit + 1} characters, at most {limit} allowed"


def test_repeated_map_and_unknown_fields_are_walked() -> None:
    ok = participant_pb2.UploadUpdateRequest(header=common_pb2.PayloadHeader(job_id="j" * 200, encoding="float32-le"))
    bounds.check(ok)
    status = admin_pb2.GetJobStatusResponse(status=admin_pb2.JobStatus(rounds=[admin_pb2.RoundStatus(
        selected=["a", "b" * (bounds.DEFAULT_CHARS + 1)])]))  # a repeated field in a repeated message, no named limit
    with pytest.raises(InvalidRequest, match=r"^GetJobStatusResponse\.status\.rounds\.selected: 257 characters"):
        bounds.check(status)
    metrics = admin_pb2.RoundStatus(metrics={"m" * 65: 1.0})  # a map key under the ``metrics`` limit
    with pytest.raises(InvalidRequest, match=r"^RoundStatus\.metrics key: 65 characters, at most 64"):
        bounds.check(metrics)


@given(st.text(max_size=3000), st.integers(0, 2000))
def test_clip_never_exceeds_its_byte_limit_and_keeps_short_text(text: str, limit: int) -> None:
    out = clip(text, limit)
    size = len(text.encode("utf-8", "backslashreplace"))
    if size <= limit:
        assert out == text
    else:
        assert len(out.encode()) <= limit
        marker = f"... [cut: {size} bytes]"
        assert out.endswith(marker) if limit > len(marker) else marker not in out
        assert text.encode("utf-8", "backslashreplace").startswith(out.removesuffix(marker).encode())


@given(st.text(max_size=500))
def test_quoted_shows_at_most_its_limit_and_the_length(value: str) -> None:
    out = quoted(value, 64)
    assert out == repr(value) if len(value) <= 64 else out == f"{value[:64]!r}... ({len(value)} characters)"
    assert len(quoted("x" * 1_000_000)) < 100
