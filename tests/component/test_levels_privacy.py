"""The personal prompt level never leaves its site: every message each participant sends is recorded, by a
recording ``CoordinatorLink`` around the in-process link and by a gRPC client interceptor on real sockets,
through whole levelled jobs, and searched for the personal level's values and sizes."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from fedprompt.app.admin_client import AdminClient
from fedprompt.app.local_link import LocalLink
from fedprompt.app.simulate import simulate
from fedprompt.config import CohortSpec, LevelsSection, ModelSection, dump_toml
from fedprompt.coordinator.jobs import JobManager
from fedprompt.data.datasets import Example
from fedprompt.models import build_classifier
from fedprompt.models.classifier import AdaptedModel
from fedprompt.participant.grpc_link import GrpcLink
from fedprompt.participant.levels import SiteLevels
from fedprompt.participant.runtime import ParticipantRuntime
from fedprompt.participant.train import GradientLearner, ProgressFn, TrainResult, train_local
from fedprompt.protocol import Payload
from fedprompt.v1 import participant_pb2, participant_pb2_grpc
from fedprompt.wire.levels import unpack
from tests.support import LiveCoordinator, tiny_job, toy_sites

SITES = ("site-0", "site-1", "site-2", "site-3")


class RecordingLink:
    """Forwards every call to the real link after recording it with its arguments: all a site sends."""

    def __init__(self, inner: LocalLink, sent: list[tuple[str, str, tuple[Any, ...]]]) -> None:
        self.inner = inner
        self.sent = sent

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.sent.append((self.inner.identity, name, (*args, *kwargs.values())))
            return method(*args, **kwargs)

        return call


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, Payload) or dataclasses.is_dataclass(value):
        return [x for f in dataclasses.fields(value) for x in _flatten(getattr(value, f.name))]
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in (*_flatten(k), *_flatten(v))]
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _flatten(v)]
    return [value]


def test_no_personal_value_or_size_is_ever_sent(tiny_encoder_dir: Path) -> None:
    base = tiny_job(tiny_encoder_dir, rounds=3, participants_per_round=4, min_participants=4)
    levels = LevelsSection(enabled=True, global_tokens=2, expert_tokens=1, personal_tokens=3,
                           cohorts=(CohortSpec("x", SITES[:2]), CohortSpec("y", SITES[2:])))
    config = dataclasses.replace(base, levels=levels, model=ModelSection(path=str(tiny_encoder_dir), prompt_length=6,
                                                                         max_length=16))
    sent: list[tuple[str, str, tuple[Any, ...]]] = []
    personal: list[np.ndarray] = []

    def observed(model: AdaptedModel, examples: list[Example], labels: list[int], train: Any, seed: int,
                 progress: ProgressFn | None = None) -> TrainResult:
        before = model.personal_vector()
        result = train_local(model, examples, labels, train, seed, progress)
        personal.extend([model.personal_vector(), model.personal_vector() - before])
        return result

    def link(jobs: JobManager, name: str) -> RecordingLink:
        return RecordingLink(LocalLink(jobs, name), sent)

    report = simulate(config, toy_sites(4), trainer=observed, link=link)
    assert report["state"] == "done" and report["cohorts"] == {"site-0": "x", "site-1": "x", "site-2": "y", "site-3": "y"}

    model = build_classifier(config)
    sizes = model.level_sizes()
    personal_size = model.personal_vector().size
    assert personal_size == 3 * 32 and len(personal) == 2 * 3 * 4  # every site trained every round
    assert all(np.abs(p).max() > 0 for p in personal[1::2])  # the personal level did train

    calls = {name for _, name, _ in sent}
    assert {"describe", "join", "upload", "report", "get_task", "download"} <= calls
    uploads = [args[0] for _, name, args in sent if name == "upload"]
    assert len(uploads) == 1 + 3 * 4  # the initial prompt and one update per site and round
    for payload in uploads:
        parts = unpack(payload.data)
        assert {name: size for name, (size, _) in parts.items()} == sizes  # global and expert, nothing else
        assert payload.vector_size == sum(sizes.values())
    joins = [args for _, name, args in sent if name == "join"]
    assert all(args[3] == sum(sizes.values()) for args in joins)

    values = _flatten([args for _, _, args in sent])
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    blobs = b"\x00".join(v if isinstance(v, bytes) else str(v).encode() for v in values)
    forbidden = {personal_size, sum(sizes.values()) + personal_size, sizes["global"] + personal_size,
                 sizes["expert"] + personal_size}
    assert not forbidden & set(numbers)
    assert model.get_vector()[:4].astype("<f4").tobytes() in blobs  # the search does find what was sent
    for vector in personal:  # neither a personal prompt nor a personal step, as float32 bytes, in any message
        for row in vector.astype("<f4").reshape(3, 32):
            assert row[:4].tobytes() not in blobs and row[-4:].tobytes() not in blobs


def test_personal_prompt_persists_in_the_state_directory_only(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    config = dataclasses.replace(tiny_job(tiny_encoder_dir), levels=LevelsSection(
        enabled=True, global_tokens=2, expert_tokens=1, personal_tokens=1, cohorts_from="discover"))
    model = build_classifier(config)
    model.set_personal_vector(np.arange(32, dtype=np.float32))
    SiteLevels(GradientLearner(model, config.train), 1, "job-1", tmp_path).keep_personal()
    assert (tmp_path / "personal" / "job-1.npy").exists()
    fresh = build_classifier(config)
    SiteLevels(GradientLearner(fresh, config.train), 1, "job-1", tmp_path)
    assert np.array_equal(fresh.personal_vector(), np.arange(32, dtype=np.float32))


class Recorder(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
               grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """A client interceptor keeping the serialised bytes of every request message, streamed or not."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()

    def _keep(self, method: str, message: Any) -> None:
        with self.lock:
            self.messages.append((method, message.SerializeToString()))

    def _tee(self, method: str, requests: Any) -> Any:
        for message in requests:
            self._keep(method, message)
            yield message

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self._keep(details.method, request)
        return continuation(details, request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        self._keep(details.method, request)
        return continuation(details, request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(details, self._tee(details.method, requests))

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(details, self._tee(details.method, requests))


def test_no_personal_value_leaves_over_grpc(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    base = tiny_job(tiny_encoder_dir, rounds=2, participants_per_round=2, min_participants=2)
    config = dataclasses.replace(base, model=ModelSection(path=str(tiny_encoder_dir), prompt_length=6, max_length=16),
                                 levels=LevelsSection(enabled=True, global_tokens=2, expert_tokens=1, personal_tokens=3,
                                                      cohorts=(CohortSpec("x", ("a", "b")),)))
    personal: list[np.ndarray] = []

    def observed(model: AdaptedModel, examples: list[Example], labels: list[int], train: Any, seed: int,
                 progress: ProgressFn | None = None) -> TrainResult:
        result = train_local(model, examples, labels, train, seed, progress)
        personal.append(model.personal_vector())
        return result

    recorder = Recorder()
    with LiveCoordinator(tmp_path / "coord") as coordinator:
        admin = AdminClient(coordinator.target)
        job_id = admin.create_job(dump_toml(config))
        runtimes, links = [], []
        for name, site in zip(("a", "b"), toy_sites(2), strict=True):
            link = GrpcLink(coordinator.target, name, give_up_after_s=10)
            links.append(link)
            link.stubs = [participant_pb2_grpc.ParticipantServiceStub(grpc.intercept_channel(link.channels[0],
                                                                                              recorder))]
            runtimes.append(ParticipantRuntime(
                link, site, job_id, lambda cfg: GradientLearner(build_classifier(cfg), cfg.train, observed),
                state_dir=tmp_path / name))
        for runtime in runtimes:
            runtime.join()
        admin.start(job_id)
        threads = [threading.Thread(target=r.run, kwargs={"poll_s": 0.2}) for r in runtimes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert admin.status(job_id).state == "done"
        admin.close()
        for link in links:
            link.close()

    model = build_classifier(config)
    sizes = model.level_sizes()
    assert len(personal) == 4 and all((tmp_path / n / "personal" / f"{job_id}.npy").exists() for n in "ab")
    uploads = [participant_pb2.UploadUpdateRequest.FromString(m) for method, m in recorder.messages
               if method.endswith("/UploadUpdate")]
    headers = [u.header for u in uploads if u.WhichOneof("part") == "header"]
    assert len(headers) == 1 + 2 * 2 and all(h.vector_size == sum(sizes.values()) for h in headers)
    data = b"".join(u.chunk.data for u in uploads if u.WhichOneof("part") == "chunk")
    sent = b"".join(m for _, m in recorder.messages)
    assert data and model.get_vector()[:4].astype("<f4").tobytes() in sent  # the initial prompt went out
    for vector in personal:
        for row in vector.astype("<f4").reshape(3, 32):
            assert row[:4].tobytes() not in sent and row[-4:].tobytes() not in sent
