"""Test support shared by every test package: job configs, toy data, live servers on port 0, processes.

Imports no ML stack (torch, transformers): the tiny models are built by ``fedprompt.app.bench.smoke``."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedprompt.config import (
    BlackboxSection,
    CohortSpec,
    CoordinatorConfig,
    CoordinatorSection,
    JobConfig,
    JobSection,
    LevelsSection,
    ModelSection,
    ModelServiceConfig,
    ModelServiceSection,
    ParticipantConfig,
    TaskSection,
    TrainSection,
)
from fedprompt.coordinator.rounds import OpenRound
from fedprompt.coordinator.runtime import JobRuntime
from fedprompt.coordinator.server import CoordinatorServer
from fedprompt.crypto.pki import CertificateAuthority
from fedprompt.data.datasets import Example
from fedprompt.data.shards import SiteData
from fedprompt.participant.model_server import ModelServer
from fedprompt.participant.model_service import ModelHost
from fedprompt.v1 import admin_pb2, participant_pb2
from fedprompt.wire.channel import ClientTls
from fedprompt.wire.levels import unpack

REPO = Path(__file__).resolve().parent.parent

POSITIVE = ["good", "great", "wonderful", "superb", "fine", "lovely", "brilliant", "excellent"]
NEGATIVE = ["bad", "awful", "terrible", "poor", "dull", "boring", "horrible", "weak"]


def open_round(job: JobRuntime) -> OpenRound | None:
    """``job.open`` read through a call. mypy keeps an ``assert job.open is None`` (or ``is not None``) in force
    after later calls that open or close a round, and would treat the test's next checks as unreachable."""
    return job.open


def stored_parts(job: JobRuntime, version: int) -> dict[str, tuple[int, bytes]]:
    """The level parts (name -> (size, data)) of a levelled job's global ``version`` as stored."""
    prompt = job.store.prompt(job.job_id, version)
    assert prompt is not None, f"job {job.job_id} has no version {version}"
    return unpack(prompt[1])


def health(target: str, service: str = "") -> int:
    """The gRPC health status (``health_pb2.HealthCheckResponse``) a plaintext server reports for ``service``."""
    with grpc.insecure_channel(target) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


M = TypeVar("M", bound=Message)

#: Every method of the coordinator's participant and admin services, as protobuf method descriptors.
COORDINATOR_METHODS: list[MethodDescriptor] = [
    method for service in (participant_pb2.DESCRIPTOR.services_by_name["ParticipantService"],
                           admin_pb2.DESCRIPTOR.services_by_name["AdminService"]) for method in service.methods]


def string_fields(message: Descriptor, path: str = "") -> list[tuple[str, str]]:
    """(dotted path, field name) of every string ``message`` can carry: nested messages' fields by their path
    (``header.job_id``), a map's string keys as ``metrics key``."""
    out = []
    for field in message.fields:
        name = f"{path}{field.name}"
        if field.type == FieldDescriptor.TYPE_STRING:
            out.append((name, field.name))
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            entry = field.message_type
            if entry.GetOptions().map_entry:
                out.extend((f"{name} {k}", field.name) for k in ("key", "value")
                           if entry.fields_by_name[k].type == FieldDescriptor.TYPE_STRING)
            else:
                out.extend(string_fields(entry, f"{name}."))
    return out


def with_string(request: M, path: str, value: str) -> M:
    """``request`` with the string at ``path`` (as ``string_fields`` names it) set to ``value`` (in a repeated
    message field, on a new element)."""
    target: Any = request
    *heads, name = path.split(".")
    for head in heads:
        target = getattr(target, head)
        if not isinstance(target, Message):  # a repeated message field: the string goes into one new element
            target = target.add()
    if name.endswith(" key"):
        getattr(target, name.split()[0])[value] = 0.0  # the only string-keyed map in a request holds doubles
    else:
        setattr(target, name, value)
    return request


def call_method(channel: grpc.Channel, method: MethodDescriptor, request: Message,
                timeout: float = 10) -> tuple[grpc.StatusCode, str]:
    """One call of ``method`` with ``request`` (sent as the only message of a client stream, responses read to
    the end of a server stream): the status it ends with and its details."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    encode = type(request).SerializeToString
    try:
        if method.client_streaming:
            channel.stream_unary(path, request_serializer=encode)(iter([request]), timeout=timeout)
        elif method.server_streaming:
            for _ in channel.unary_stream(path, request_serializer=encode)(request, timeout=timeout):
                pass
        else:
            channel.unary_unary(path, request_serializer=encode)(request, timeout=timeout)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def tiny_job(model_dir: Path, **job: object) -> JobConfig:
    """A fast job on a tiny model: 4 prompt tokens, a couple of local steps per round."""
    fields = {"name": "tiny", "rounds": 2, "participants_per_round": 3, "min_participants": 2,
              "round_deadline_s": 60.0, "allowed_participants": ("*",), **job}
    return JobConfig(
        job=JobSection(**fields),  # type: ignore[arg-type]
        model=ModelSection(path=str(model_dir), prompt_length=4, max_length=16),
        task=TaskSection(label_names=("neg", "pos"), label_words=("bad", "good")),
        train=TrainSection(local_epochs=1, max_steps=2, batch_size=4, lr=0.05),
    )


def levelled(base: JobConfig, *cohorts: tuple[str, tuple[str, ...]], **levels: object) -> JobConfig:
    """``base`` with prompt levels (2 global, 1 expert, 1 personal token) and the admin's ``cohorts``."""
    section = LevelsSection(enabled=True, global_tokens=2, expert_tokens=1, personal_tokens=1,
                            cohorts=tuple(CohortSpec(n, m) for n, m in cohorts), **levels)  # type: ignore[arg-type]
    return dataclasses.replace(base, levels=section)


#: A privacy accountant history of three different steps (noise multiplier, sample rate, count).
MIXED_HISTORY = [(1.0, 0.1, 5), (1.2, 0.05, 7), (0.9, 0.2, 3)]

A = TypeVar("A")


def with_history(accountant: A, history: list[tuple[float, float, int]]) -> A:
    """``accountant`` (ours or Opacus's) holding ``history``, as Opacus's own noise calibration sets it."""
    accountant.history = list(history)  # type: ignore[attr-defined]
    return accountant


def toy_examples(n: int, seed: int) -> list[Example]:
    """Short synthetic sentences whose sentiment word decides the label."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        positive = rng.random() < 0.5
        word = rng.choice(POSITIVE if positive else NEGATIVE)
        out.append(Example(f"the film was {word} overall", "pos" if positive else "neg"))
    return out


def write_toy_dataset(path: Path, n: int, seed: int) -> Path:
    """``n`` toy examples as a user's JSONL dataset, each text numbered: a dataset is deduplicated when loaded,
    and ``toy_examples`` repeats its few sentences."""
    from fedprompt.data.datasets import write_jsonl

    write_jsonl(path, [Example(f"{ex.text} {i}", ex.label) for i, ex in enumerate(toy_examples(n, seed))])
    return path


def toy_sites(n_sites: int = 3, train: int = 12, test: int = 8, seed: int = 0) -> list[SiteData]:
    return [SiteData(toy_examples(train + k, seed + k), toy_examples(test, seed + 100 + k)) for k in range(n_sites)]


def write_site(site: SiteData, directory: Path) -> Path:
    from fedprompt.data.datasets import write_jsonl

    write_jsonl(directory / "train.jsonl", site.train)
    write_jsonl(directory / "test.jsonl", site.test)
    return directory


class ThrowawayPki:
    """A throwaway federation CA in a temporary directory, issuing real certificates on demand."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = CertificateAuthority.init(directory / "ca")
        self.coordinator_key, self.coordinator_cert = self.ca.issue("coordinator:test", directory / "coordinator",
                                                                    ["localhost", "127.0.0.1"])

    def tls(self, identity: str, days: int = 1, not_before: dt.datetime | None = None) -> ClientTls:
        """Client credentials for ``identity`` (a fresh key and certificate signed by this CA)."""
        key, cert = self.ca.issue(identity, self.dir / "clients" / f"{identity.replace(':', '-')}-{days}", days=days,
                                  not_before=not_before)
        return ClientTls(str(self.ca.ca_cert_path), str(cert), str(key))

    def coordinator_settings(self) -> dict[str, object]:
        return {"insecure": False, "ca_cert": str(self.ca.ca_cert_path), "cert": str(self.coordinator_cert),
                "key": str(self.coordinator_key), "crl": str(self.ca.crl_path)}


class _LiveServer:
    """A real grpc.aio server object with ``start() -> port`` / ``stop(grace)`` run in a background loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0

    def _make(self):
        raise NotImplementedError

    def call(self, fn):
        """Run ``fn()`` on the server's event loop thread (domain objects are not thread-safe)."""
        async def run():
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    def __enter__(self):
        self.thread.start()
        self.server = self._make()
        self.port = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


class LiveCoordinator(_LiveServer):
    """A real ``CoordinatorServer`` on 127.0.0.1:0 in a background event loop, for component tests.

    Plaintext (``--insecure``) unless ``pki`` is given, in which case it serves mTLS with that CA.
    """

    def __init__(self, state_dir: Path, pki: ThrowawayPki | None = None, **settings: object) -> None:
        super().__init__()
        base: dict[str, object] = {"insecure": True} if pki is None else pki.coordinator_settings()
        self.settings = CoordinatorSection(listen="127.0.0.1:0", state_dir=str(state_dir),
                                           **{"tick_s": 0.05, **base, **settings})  # type: ignore[arg-type]

    def _make(self) -> CoordinatorServer:
        return CoordinatorServer(self.settings)


class LiveModelService(_LiveServer):
    """A real query-only ``ModelServer`` for ``model_dir`` on 127.0.0.1:0 in a background event loop.

    Plaintext unless ``pki`` is given, in which case it serves mTLS with a certificate from that CA.
    """

    def __init__(self, model_dir: Path, pki: ThrowawayPki | None = None, **settings: object) -> None:
        super().__init__()
        tls: dict[str, object] = {"insecure": True}
        if pki is not None:
            key, cert = pki.ca.issue("model:service", pki.dir / "model-service", ["localhost", "127.0.0.1"])
            tls = {"insecure": False, "ca_cert": str(pki.ca.ca_cert_path), "cert": str(cert), "key": str(key)}
        self.settings = ModelServiceSection(listen="127.0.0.1:0", model=str(model_dir),
                                            **{**tls, **settings})  # type: ignore[arg-type]

    def _make(self) -> ModelServer:
        return ModelServer(self.settings, ModelHost.load(self.settings))


def blackbox_job(model_dir: Path, aggregator: str = "fedbpt", **job: object) -> JobConfig:
    """``tiny_job`` in black-box mode: frozen head, a small CMA-ES search (d = 12, 4 candidates, 2 iterations)."""
    config = tiny_job(model_dir, aggregator=aggregator, **job)
    return dataclasses.replace(config, model=dataclasses.replace(config.model, train_head=False),
                               blackbox=BlackboxSection(enabled=True, intrinsic_dim=12, population=4,
                                                        local_iterations=2, batch_size=4))


def fedprompt_process(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m fedprompt ARGS`` importing this checkout, output to ``log``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "fedprompt", *args], stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, env=env, cwd=REPO)


def run_fedprompt(args: list[str], stdin: bytes = b"", env: dict[str, str] | None = None,
                  timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``python -m fedprompt ARGS`` from this checkout to its end; output decoded as Latin-1, so any bytes
    a command prints can be checked."""
    full = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "fedprompt", *args], input=stdin.decode("latin-1"),
                          capture_output=True, text=True, cwd=REPO, env=full, timeout=timeout, encoding="latin-1")


def without_packages(directory: Path, *names: str) -> dict[str, str]:
    """The environment for ``run_fedprompt`` in which ``names`` are not installed: each is shadowed, first on the
    path, by a package whose import fails as a missing one's does (an optional extra left out)."""
    for name in names:
        (directory / name).mkdir(parents=True, exist_ok=True)
        (directory / name / "__init__.py").write_text(f'raise ModuleNotFoundError("No module named {name!r}")\n')
    return {"PYTHONPATH": os.pathsep.join([str(directory), str(REPO)])}


def toy_job(tmp_path: Path, model: Path) -> tuple[Path, Path, str]:
    """A toy sentiment CSV (60 rows, columns ``tweet`` and ``sentiment``) prepared for 2 sites by ``data prepare
    --write-job`` on ``model`` (e.g. the ``tiny_encoder_dir`` fixture): (the CSV, the job file, prepare's output)."""
    words = {"pos": ("good", "great", "lovely"), "neg": ("bad", "awful", "dull")}
    labels = ["pos" if k % 2 else "neg" for k in range(60)]
    data = tmp_path / "my.csv"
    data.write_text("tweet,sentiment\n" + "".join(f"film {k} was {words[y][k % 3]},{y}\n" for k, y in enumerate(labels)),
                    encoding="utf-8")
    job = tmp_path / "job.toml"
    result = run_fedprompt(["data", "prepare", "--dataset", str(data), "--out", str(tmp_path / "out"),
                            "--text-column", "tweet", "--label-column", "sentiment", "--participants", "2",
                            "--test-size", "12", "--write-job", str(job), "--model", str(model)])
    assert result.returncode == 0 and result.stderr == "", result.stderr[-2000:]
    return data, job, result.stdout


def refused_in_one_line(result: subprocess.CompletedProcess[str], name: str) -> str:
    """The one ``fedprompt: error: ...`` line a refused command printed (exit 2, no traceback), naming ``name``."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("fedprompt: error: "), result.stderr[-2000:]
    assert name in lines[0], lines[0]
    return lines[0]


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail the test with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@contextmanager
def stopping(*procs: subprocess.Popen[bytes]) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


#: Every config class a TOML file is loaded into, walked by the config tests key by key.
CONFIGS: tuple[type[Any], ...] = (JobConfig, CoordinatorConfig, ParticipantConfig, ModelServiceConfig)
KeyPath = tuple[str | int, ...]  # a key's path: table names, and 0 for the first element of an array of tables


def dotted_key(path: KeyPath) -> str:
    """A key path as the loader names it in errors: ``levels.cohorts[0].members``."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def nested(path: KeyPath, value: Any) -> Any:
    """The TOML mapping that sets ``path`` to ``value`` and nothing else."""
    for part in reversed(path):
        value = [value] if isinstance(part, int) else {part: value}
    return value
