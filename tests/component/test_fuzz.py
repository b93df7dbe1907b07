"""Hostile input: property-based fuzzing of every participant-facing RPC on a real mTLS coordinator.

Each generated request is a valid request with at least one invalidating mutation (a wrong job, round,
version, size, weight, digest, encoding, chunk order or count, a missing or repeated header, an oversized
message, a non-finite value, a caller who is not enrolled...), or raw bytes that are not a valid message.
The admin's ``CreateJob`` gets valid job configs with one hostile mutation (a name with a forbidden
character, a number out of its range, deep nesting, a control character, a duplicated key).
Property: the coordinator answers every one with a refusal status from the domain table (never OK, never
UNKNOWN, which would mean an unexpected exception), and afterwards the open round completes with exactly
the weighted average of the honest updates, and no job was created beside the fuzzed one.

Hostile job names (admin input: parent references, absolute paths, separators, control characters, long UTF-8):
whatever name the config accepts, the coordinator writes nothing outside its state directory, before or after a
restart, and names its files after opaque job ids only.

One class is checked more strictly: a string over its field's limit (``wire.bounds``) in any field of any
participant request gets INVALID_ARGUMENT naming that field (never RESOURCE_EXHAUSTED, which is what a value
echoed into the status used to cause), and its rejection's log line stays short.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from fedprompt.app.admin_client import AdminClient
from fedprompt.config import dump_toml, job_name_problem
from fedprompt.errors import InvalidRequest
from fedprompt.participant.grpc_link import GrpcLink
from fedprompt.protocol import Payload, PayloadHeader
from fedprompt.v1 import admin_pb2, common_pb2, participant_pb2, participant_pb2_grpc
from fedprompt.wire import bounds, serde
from fedprompt.wire.channel import open_channel
from fedprompt.wire.payload import FLOAT32, encode_vector
from fedprompt.wire.rpc import MAX_STATUS_BYTES
from tests.support import (
    COORDINATOR_METHODS,
    LiveCoordinator,
    ThrowawayPki,
    call_method,
    string_fields,
    tiny_job,
    wait_for,
    with_string,
)

SIZE = 8
MEMBERS = ("participant:a", "participant:b", "participant:c")
OUTSIDER = "participant:mallory"  # a certificate from the federation CA, but not on this job's allow-list
REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.RESOURCE_EXHAUSTED}
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
SERVICE = "/fedprompt.v1.ParticipantService/"

texts = st.text(max_size=300) | st.binary(max_size=40).map(lambda b: b.hex())
uint32 = st.integers(0, 2**32 - 1)
uint64 = st.integers(0, 2**64 - 1)
#: Every string of every participant request: (method, dotted path, field name).
STRING_FIELDS = [(m, path, field) for m in COORDINATOR_METHODS if m.containing_service.name == "ParticipantService"
                 for path, field in string_fields(m.input_type)]


class Fuzzer:
    """Sends requests as one member (or the outsider) and checks that each is refused."""

    def __init__(self, coordinator: LiveCoordinator, pki: ThrowawayPki, job_id: str) -> None:
        self.job_id = job_id
        self.channels = {who: open_channel(coordinator.target, pki.tls(who)) for who in (*MEMBERS, OUTSIDER)}
        self.stubs = {who: participant_pb2_grpc.ParticipantServiceStub(ch) for who, ch in self.channels.items()}
        self.messages = 0
        self.codes: dict[str, int] = {}

    def refused(self, call: Callable[[], Any], messages: int, allowed: set[grpc.StatusCode] = REFUSALS) -> None:
        self.messages += messages
        try:
            response = call()
            if isinstance(response, Iterator):
                list(response)
        except grpc.RpcError as exc:
            code = exc.code()
            self.codes[code.name] = self.codes.get(code.name, 0) + 1
            assert code in allowed, f"{code.name}: {exc.details()}"
            return
        raise AssertionError("a malformed request was accepted")

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()


#: Job names that must be refused: anything the name rule refuses, and the log-injection classes by hand.
hostile_names = (st.text(min_size=1, max_size=70).filter(lambda s: job_name_problem(s) is not None)
                 | st.sampled_from(["evil\nINFO fake log line", "\x1b[31mred", "ding\x07", "../x", "a/b", "a..b", "é" * 65]))
finite = st.floats(allow_nan=False, allow_infinity=False)
non_finite = st.sampled_from([math.nan, math.inf, -math.inf])
#: For a number of each section, values outside its range (non-finite, negative, or beyond its cap).
bad_numbers: dict[tuple[str, str], st.SearchStrategy[Any]] = {
    ("job", "rounds"): st.integers(-(2**63), 0) | st.integers(100_001, 2**63 - 1),
    ("job", "participants_per_round"): st.integers(-(2**63), 0) | st.integers(100_001, 2**63 - 1),
    ("job", "seed"): st.integers(-(2**63), -1) | st.integers(2**63, 2**80),
    ("job", "round_deadline_s"): non_finite | finite.filter(lambda x: not 0 < x <= 604_800),
    ("train", "max_steps"): st.integers(-(2**63), -1) | st.integers(1_000_001, 2**63 - 1),
    ("train", "lr"): non_finite | finite.filter(lambda x: not 0 < x <= 10),
    ("dp", "epsilon"): st.just(math.nan) | finite.filter(lambda x: not 0 < x <= 1000),
    ("dp", "noise_multiplier"): non_finite | finite.filter(lambda x: not 0 <= x <= 1000),
    ("robust", "max_malicious"): st.integers(-(2**63), -1) | st.integers(100_001, 2**63 - 1),
    ("levels", "discover_round"): st.integers(-(2**63), 0) | st.integers(100_001, 2**63 - 1),
}


def hostile_config(data: st.DataObject, valid: str) -> tuple[str, str]:
    """``valid`` job TOML with one hostile mutation, and how the coordinator's refusal must start."""
    kind = data.draw(st.sampled_from(["name", "number", "nesting", "control", "duplicate"]))
    if kind in ("name", "number"):
        mapping = tomllib.loads(valid)
        section, key = (("job", "name") if kind == "name" else data.draw(st.sampled_from(sorted(bad_numbers))))
        mapping[section][key] = data.draw(hostile_names if kind == "name" else bad_numbers[(section, key)])
        return tomli_w.dumps(mapping), f"{section}.{key}: "
    if kind == "nesting":
        depth = data.draw(st.integers(1000, 5000))
        return valid + "x = " + data.draw(st.sampled_from(["[", "{a = "])) * depth, "job config: invalid TOML: "
    if kind == "control":  # a control character is illegal anywhere in TOML, strings and comments included
        at = data.draw(st.integers(0, len(valid)))
        return valid[:at] + data.draw(st.sampled_from("\x00\x01\x07\x1b\x7f\x0b")) + valid[at:], "job config: invalid TOML: "
    return valid.replace("[job]\n", "[job]\nrounds = 7\n"), "job config: invalid TOML: Cannot overwrite a value"


def other_job(job_id: str) -> st.SearchStrategy[str]:
    return texts.filter(lambda s: s not in (job_id, "fuzz"))


def upload_messages(data: st.DataObject, job_id: str) -> tuple[list[participant_pb2.UploadUpdateRequest], str]:
    """A valid round-1 upload of a random finite vector, then at least one mutation that must get it refused."""
    vector = np.asarray(data.draw(st.lists(st.floats(-10, 10, width=32), min_size=SIZE, max_size=SIZE)), np.float32)
    payload = Payload(job_id, 1, FLOAT32, SIZE, encode_vector(vector), 10)
    header = payload.header(len(payload.data))
    fields = dict(header.__dict__)
    chunks = [payload.data]
    caller = "participant:a"
    kinds = data.draw(st.sets(st.sampled_from([
        "job", "round", "encoding", "vector_size", "num_examples", "total_bytes", "num_chunks", "sha256",
        "truncate", "extend", "flip", "nan", "no_header", "two_headers", "header_last", "extra_chunk",
        "no_chunk", "index", "reorder", "oversized", "outsider"]), min_size=1, max_size=3))
    if "nan" in kinds:  # correct framing and digest, but a non-finite value inside
        bad = vector.copy()
        bad[data.draw(st.integers(0, SIZE - 1))] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        chunks = [encode_vector(bad)]
        fields["sha256"] = hashlib.sha256(chunks[0]).digest()
    if "job" in kinds:
        fields["job_id"] = data.draw(other_job(job_id))
    if "round" in kinds:
        fields["round"] = data.draw(st.just(0) | st.integers(2, 2**32 - 1))
    if "encoding" in kinds:
        fields["encoding"] = data.draw(texts.filter(lambda s: s != FLOAT32))
    if "vector_size" in kinds:
        fields["vector_size"] = data.draw(uint32.filter(lambda n: n != SIZE))
    if "num_examples" in kinds:
        fields["num_examples"] = data.draw(st.just(0) | st.integers(31, 2**64 - 1))
    if "total_bytes" in kinds:
        fields["total_bytes"] = data.draw(uint64.filter(lambda n: n != 4 * SIZE))
    if "num_chunks" in kinds:
        fields["num_chunks"] = data.draw(uint32.filter(lambda n: n != 1))
    if "sha256" in kinds:
        fields["sha256"] = data.draw(st.binary(max_size=64).filter(lambda b: b != fields["sha256"]))
    if "truncate" in kinds:
        chunks = [chunks[0][: data.draw(st.integers(0, 4 * SIZE - 1))]]
    if "extend" in kinds:
        chunks = [chunks[0] + data.draw(st.binary(min_size=1, max_size=64))]
    if "flip" in kinds:
        at = data.draw(st.integers(0, len(chunks[0]) * 8 - 1)) if chunks[0] else 0
        raw = bytearray(chunks[0] or b"\0")
        raw[at // 8] ^= 1 << (at % 8)
        chunks = [bytes(raw)]
    if "oversized" in kinds:  # one message above the coordinator's 64 KiB message limit
        chunks = [chunks[0] + b"\0" * 70_000]
    if "outsider" in kinds:
        caller = OUTSIDER
    head = participant_pb2.UploadUpdateRequest(header=serde.header_to_pb(PayloadHeader(**fields)))
    body = [participant_pb2.UploadUpdateRequest(chunk=common_pb2.PayloadChunk(index=i, data=c))
            for i, c in enumerate(chunks)]
    if "index" in kinds:
        body[0].chunk.index = data.draw(uint32.filter(lambda n: n != 0))
    if "reorder" in kinds:  # the payload as two chunks, sent second-first
        half = len(chunks[0]) // 2
        head.header.num_chunks = 2
        body = [participant_pb2.UploadUpdateRequest(chunk=common_pb2.PayloadChunk(index=1, data=chunks[0][half:])),
                participant_pb2.UploadUpdateRequest(chunk=common_pb2.PayloadChunk(index=0, data=chunks[0][:half]))]
    if "extra_chunk" in kinds:
        body.append(participant_pb2.UploadUpdateRequest(chunk=common_pb2.PayloadChunk(
            index=len(body), data=data.draw(st.binary(max_size=16)))))
    if "no_chunk" in kinds:
        body = []
    stream = [head, *body]
    if "header_last" in kinds:
        stream = [*body, head]
    if "two_headers" in kinds:
        stream = [head, head, *body]
    if "no_header" in kinds:
        stream = [m for m in stream if m.WhichOneof("part") != "header"]
    return stream, caller


@pytest.mark.slow
def test_fuzz_every_participant_rpc_then_round_completes(tmp_path: Path) -> None:
    pki = ThrowawayPki(tmp_path / "pki")
    with LiveCoordinator(tmp_path / "coord", pki, rate_limit_per_s=1e6, rate_limit_burst=10**6,
                         max_message_bytes=65536, upload_timeout_s=2.0) as coordinator:
        admin = AdminClient(coordinator.target, pki.tls("admin:alice"))
        job_id = admin.create_job(dump_toml(tiny_job(tmp_path, name="fuzz", rounds=2, participants_per_round=3,
                                                     min_participants=3, round_deadline_s=600.0,
                                                     allowed_participants=MEMBERS)))
        links = {who: GrpcLink(coordinator.target, tls=pki.tls(who), give_up_after_s=5) for who in MEMBERS}
        for link in links.values():
            link.join(job_id, 30, 4, SIZE)
        links["participant:a"].upload(Payload(job_id, 0, FLOAT32, SIZE, encode_vector(np.zeros(SIZE, np.float32))))
        admin.start(job_id)
        assert admin.status(job_id).rounds[0].selected == MEMBERS
        fuzz = Fuzzer(coordinator, pki, job_id)
        s = fuzz.stubs
        started = time.monotonic()

        @FUZZ
        @given(st.data())
        def describe(data: st.DataObject) -> None:
            if data.draw(st.booleans()):
                who, job = OUTSIDER, data.draw(st.sampled_from([job_id, "fuzz"]))
            else:
                who, job = data.draw(st.sampled_from(MEMBERS)), data.draw(other_job(job_id))
            fuzz.refused(lambda: s[who].DescribeJob(participant_pb2.DescribeJobRequest(job=job), timeout=10), 1)

        @FUZZ
        @given(st.data())
        def join(data: st.DataObject) -> None:
            request: dict[str, Any] = {"job": job_id, "num_train_examples": 30, "num_test_examples": 4, "vector_size": SIZE}
            who = data.draw(st.sampled_from(MEMBERS))
            for kind in data.draw(st.sets(st.sampled_from(["job", "train", "test", "size", "outsider"]), min_size=1)):
                if kind == "job":
                    request["job"] = data.draw(other_job(job_id))
                elif kind == "train":
                    request["num_train_examples"] = data.draw(st.just(0) | st.integers(10**9 + 1, 2**64 - 1))
                elif kind == "test":
                    request["num_test_examples"] = data.draw(st.integers(10**9 + 1, 2**64 - 1))
                elif kind == "size":
                    request["vector_size"] = data.draw(uint32.filter(lambda n: n != SIZE))
                else:
                    who = OUTSIDER
            fuzz.refused(lambda: s[who].Join(participant_pb2.JoinRequest(**request), timeout=10), 1)

        @FUZZ
        @given(st.data())
        def get_task(data: st.DataObject) -> None:
            wait = data.draw(st.integers(0, 50))
            who, job = ((OUTSIDER, job_id) if data.draw(st.booleans())
                        else (data.draw(st.sampled_from(MEMBERS)), data.draw(other_job(job_id))))
            fuzz.refused(lambda: s[who].GetTask(participant_pb2.GetTaskRequest(job_id=job, wait_ms=wait), timeout=10), 1)

        @FUZZ
        @given(st.data())
        def download(data: st.DataObject) -> None:
            request: dict[str, Any] = {"job_id": job_id, "version": data.draw(st.integers(0, 1))}
            who = data.draw(st.sampled_from(MEMBERS))
            kinds = data.draw(st.sets(st.sampled_from(["job", "version", "outsider"]), min_size=1))
            if "job" in kinds:
                request["job_id"] = data.draw(other_job(job_id))
            if "version" in kinds:
                request["version"] = data.draw(st.integers(1, 2**32 - 1))
            if "outsider" in kinds:
                who = OUTSIDER
            fuzz.refused(lambda: s[who].DownloadGlobal(participant_pb2.DownloadGlobalRequest(**request), timeout=10), 1)

        @FUZZ
        @given(st.data())
        def report(data: st.DataObject) -> None:
            metrics: dict[str, float] = {"accuracy": data.draw(st.floats(0, 1))}
            request: dict[str, Any] = {"job_id": job_id, "version": 0, "num_examples": data.draw(st.integers(0, 4))}
            who = data.draw(st.sampled_from(MEMBERS))
            kinds = data.draw(st.sets(st.sampled_from(["job", "version", "nonfinite", "many", "name", "weight",
                                                       "outsider"]), min_size=1))
            if "job" in kinds:
                request["job_id"] = data.draw(other_job(job_id))
            if "version" in kinds:
                request["version"] = data.draw(st.integers(1, 2**32 - 1))
            if "nonfinite" in kinds:
                metrics["loss"] = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]))
            if "many" in kinds:
                metrics.update({f"m{i}": 0.0 for i in range(data.draw(st.integers(33, 200)))})
            if "name" in kinds:
                metrics[data.draw(st.just("") | st.text(min_size=65, max_size=300))] = 0.0
            if "weight" in kinds:
                request["num_examples"] = data.draw(st.integers(5, 2**64 - 1))
            if "outsider" in kinds:
                who = OUTSIDER
            fuzz.refused(lambda: s[who].ReportMetrics(participant_pb2.ReportMetricsRequest(metrics=metrics, **request),
                                                      timeout=10), 1)

        @settings(FUZZ, max_examples=350)
        @given(st.data())
        def upload(data: st.DataObject) -> None:
            stream, who = upload_messages(data, job_id)
            fuzz.refused(lambda: s[who].UploadUpdate(iter(stream), timeout=10), max(1, len(stream)))

        @settings(FUZZ, max_examples=30)
        @given(st.sampled_from(["DescribeJob", "Join", "GetTask", "DownloadGlobal", "ReportMetrics", "UploadUpdate"]),
               st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=3))
        def raw_bytes(method: str, blobs: list[bytes]) -> None:
            channel = fuzz.channels[MEMBERS[0]]
            if method == "UploadUpdate":
                call = channel.stream_unary(SERVICE + method)
                fuzz.refused(lambda: call(iter(blobs), timeout=10), len(blobs))
            elif method == "DownloadGlobal":
                stream = channel.unary_stream(SERVICE + method)
                fuzz.refused(lambda: stream(blobs[0], timeout=10), 1)
            else:
                fuzz.refused(lambda: channel.unary_unary(SERVICE + method)(blobs[0], timeout=10), 1)

        valid = dump_toml(tiny_job(tmp_path, name="fuzz-admin", allowed_participants=MEMBERS))

        @FUZZ
        @given(st.data())
        def create_job(data: st.DataObject) -> None:
            text, reason = hostile_config(data, valid)
            fuzz.messages += 1
            try:
                admin.stub.CreateJob(admin_pb2.CreateJobRequest(config_toml=text), timeout=10)
            except grpc.RpcError as exc:
                details = exc.details() or ""
                fuzz.codes[exc.code().name] = fuzz.codes.get(exc.code().name, 0) + 1
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{exc.code().name}: {details}"
                assert details.startswith(reason) and details.isprintable(), details  # one line, key or source first
                return
            raise AssertionError("a hostile job config was accepted")

        @settings(FUZZ, max_examples=60)
        @given(st.sampled_from(STRING_FIELDS), st.data())
        def strings(target: tuple[Any, str, str], data: st.DataObject) -> None:
            method, path, field = target
            limit = bounds.LIMITS[field]
            # up to 4 bytes a character, and below the 64 KiB message limit (a larger message is refused whole)
            value = data.draw(st.text(st.sampled_from("a\u00e9\u20ac\U0001f600\x00%"), min_size=limit + 1,
                                      max_size=min(4 * limit, 15_000)))
            request = participant_pb2.UploadUpdateRequest() if method.name == "UploadUpdate" else \
                getattr(participant_pb2, method.input_type.name)(**{
                    k: job_id for k in ("job", "job_id") if k in method.input_type.fields_by_name})
            who = data.draw(st.sampled_from([*MEMBERS, OUTSIDER]))
            code, details = call_method(fuzz.channels[who], method, with_string(request, path, value))
            fuzz.messages += 1
            fuzz.codes[code.name] = fuzz.codes.get(code.name, 0) + 1
            assert code is grpc.StatusCode.INVALID_ARGUMENT, f"{method.name}.{path}: {code.name} {details[:200]}"
            assert details == f"{method.input_type.name}.{path}: {len(value)} characters, at most {limit} allowed"

        for run in (describe, join, get_task, download, report, upload, raw_bytes, create_job):
            run()
        with capture_logs(processors=[merge_contextvars]) as logs:
            strings()
        rejected = [entry for entry in logs if str(entry["event"]).endswith(" rejected")]
        assert len(rejected) >= 60 and {entry["status"] for entry in rejected} == {"INVALID_ARGUMENT"}
        assert max(len(repr(entry).encode()) for entry in rejected) < MAX_STATUS_BYTES
        # a stream that stalls after its header is cut off by the upload timeout
        stalled = upload_messages_stalling(job_id)
        fuzz.refused(lambda: s["participant:a"].UploadUpdate(stalled, timeout=10), 1)
        fuzzed_s = time.monotonic() - started
        fuzz.close()
        print(f"fuzz: {fuzz.messages} messages in {fuzzed_s:.1f} s, refusals {fuzz.codes}")
        assert fuzz.messages >= 1000

        # nothing was accepted, no job created and no member's enrollment changed
        assert [j.job_id for j in admin.jobs()] == [job_id]
        view = admin.status(job_id)
        assert view.state == "running" and view.rounds[0].reported == () and view.global_version == 0
        assert {p.participant_id: p.num_train_examples for p in admin.participants(job_id)} == dict.fromkeys(MEMBERS, 30)
        # the round goes on and aggregates exactly the honest updates
        honest = {"participant:a": (1.0, 10), "participant:b": (4.0, 20), "participant:c": (-2.0, 30)}
        for who, (value, n) in honest.items():
            links[who].upload(Payload(job_id, 1, FLOAT32, SIZE, encode_vector(np.full(SIZE, value, np.float32)), n))
        view = admin.status(job_id)
        assert view.global_version == 1 and view.rounds[0].state == "done"
        expected = sum(v * n for v, n in honest.values()) / sum(n for _, n in honest.values())
        got = np.frombuffer(links["participant:b"].download(job_id, 1).data, "<f4")
        np.testing.assert_allclose(got, np.full(SIZE, expected), rtol=1e-6)
        for link in links.values():
            link.close()
        admin.close()


def upload_messages_stalling(job_id: str) -> Iterator[participant_pb2.UploadUpdateRequest]:
    data = encode_vector(np.ones(SIZE, np.float32))
    yield participant_pb2.UploadUpdateRequest(header=serde.header_to_pb(
        Payload(job_id, 1, FLOAT32, SIZE, data, 10).header(len(data))))
    time.sleep(3.0)  # longer than the coordinator's 2 s upload timeout
    yield participant_pb2.UploadUpdateRequest(chunk=common_pb2.PayloadChunk(index=0, data=data))


#: Pieces of hostile job names: parent references, separators, control characters, long UTF-8, look-alikes.
NAME_PARTS = st.sampled_from(["..", ".", "", "escape", "dotdot", "\\", "~", "$HOME", "%2e%2e", "\x00", "\x01",
                              "\x1f", "\x7f", "\t", "\n", "\r", " ", "é" * 60, "é" * 130, "\u202e", "\ufeff",
                              "\u2215", "con", "nul.txt"]) | st.text(max_size=12)


def paths_under(root: Path, skip: Path) -> set[str]:
    """Every path under ``root`` outside ``skip``, relative to ``root``."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_relative_to(skip)}


def test_no_job_name_makes_the_coordinator_write_outside_its_state_directory(tmp_path: Path) -> None:
    pki = ThrowawayPki(tmp_path / "pki")
    member = "participant:a"
    tls = pki.tls(member)
    # Deep enough that up to five ".." parts from the checkpoints directory stay inside tmp_path (were a name to
    # escape, the file would land where the comparison below sees it), and absolute names are rooted there too.
    state = tmp_path.joinpath(*"abcdefg", "state")
    rooted = tmp_path.joinpath(*"hijklmn")
    names = (st.lists(NAME_PARTS, min_size=1, max_size=5).map("/".join)
             | st.lists(NAME_PARTS, max_size=4).map(lambda parts: "/".join([str(rooted), *parts]))
             | st.integers(1, 200).map(lambda n: "é" * n)
             | st.text(min_size=1, max_size=300))
    admin_tls = pki.tls("admin:alice")
    created: dict[str, str] = {}
    refused = 0
    with LiveCoordinator(state, pki) as live:
        before = paths_under(tmp_path, state)  # the PKI and the state directory's own parents
        admin = AdminClient(live.target, admin_tls)
        link = GrpcLink(live.target, tls=tls, give_up_after_s=5)

        @settings(FUZZ, max_examples=100)
        @given(names)
        def create(name: str) -> None:
            nonlocal refused
            try:
                job_id = admin.create_job(dump_toml(tiny_job(tmp_path, name=name, allowed_participants=(member,))))
            except InvalidRequest:  # a name the config refuses: nothing to write
                refused += 1
                return
            assert re.fullmatch(r"job-[0-9a-f]{16}", job_id), job_id
            created[job_id] = name
            link.join(job_id, 30, 4, SIZE)
            link.upload(Payload(job_id, 0, FLOAT32, SIZE, encode_vector(np.zeros(SIZE, np.float32))))
            wait_for(lambda: (state / "checkpoints" / f"{job_id}.safetensors").is_file(), 10, interval=0.02,
                     what="the checkpoint of version 0")
            if len(name) <= 200:
                assert admin.status(name).job_id == job_id  # still found by its name
            assert paths_under(tmp_path, state) == before

        create()
        link.close()
        admin.close()
    with LiveCoordinator(state, pki):  # a restart resumes every job and checkpoints each one again
        time.sleep(0.3)
    print(f"hostile names: {len(created)} jobs created, {refused} names refused by the config")
    assert created and paths_under(tmp_path, state) == before
    assert {str(p.relative_to(state)) for p in state.rglob("*") if p.is_file() and p.parent != state} == {
        f"checkpoints/{job_id}.safetensors" for job_id in created}
