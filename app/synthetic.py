"""A participant without a model: deterministic pseudo-random prompt-sized deltas over any ``CoordinatorLink``.

For load benchmarks and fault-injection tests, where the protocol matters and the learning does not.  Each
update is a pure function of (seed, participant, round), like a real participant's training is a function of
(global prompt, site, round): a resubmitted update equals the one that was lost, and the global prompt an
uninterrupted run would reach can be computed exactly.

``python -m participant.synthetic --coordinator HOST:PORT --job JOB --prefix NAME --count N --vector-size D``
runs N of them on threads in one process and prints a JSON summary line.  Their calls share one asyncio
loop and ``grpc.aio`` channel per coordinator address (``LoopStub``), so a process can hold thousands of them;
``--coordinator`` may list several addresses (a failover pair's replicas), which the links fail over between.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
import zlib
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import grpc
import numpy as np
import structlog

from fedprompt.errors import ERRORS
from fedprompt.participant.grpc_link import channel_options
from fedprompt.participant.runtime import ROUND_MOVED_ON
from fedprompt.protocol import CoordinatorLink, JoinInfo, Payload, Task, TaskKind
from fedprompt.v1 import participant_pb2_grpc
from fedprompt.wire.payload import FLOAT32, encode_vector

log = structlog.get_logger("fedprompt.app.synthetic")
T = TypeVar("T")

#: What grpc's asyncio client reports when a streamed write fails because the call has already ended (the
#: connection dropped with a coordinator killed mid-upload, or the server answered first): INTERNAL with this
#: text, in place of the status the call ended with (grpc/grpc#36066; the blocking client reports that status).
AIO_WRITE_FAILED = (grpc.StatusCode.INTERNAL, "Internal error from Core")


def blocking_status(exc: grpc.aio.AioRpcError) -> grpc.aio.AioRpcError:
    """``exc`` as the blocking stub would report it: the asyncio client's stand-in for a write into an ended call
    becomes UNAVAILABLE, which ``GrpcLink`` retries (the retry gets the real answer: no server sends that text);
    any other status is left as it is."""
    if (exc.code(), exc.details()) != AIO_WRITE_FAILED:
        return exc
    return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, exc.initial_metadata(), exc.trailing_metadata(),
                                details=f"the call ended under a streamed write ({exc.details()})",
                                debug_error_string=exc.debug_error_string())


def _rng(*key: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(":".join(map(str, key)).encode()))


def synthetic_delta(seed: int, participant: str, round_: int, size: int) -> np.ndarray:
    """The update ``participant`` submits for ``round_``: small Gaussian noise, identical on every retry."""
    return (_rng(seed, participant, round_).standard_normal(size) * 0.01).astype(np.float32)


def synthetic_initial(seed: int, size: int) -> np.ndarray:
    """The initial global prompt the first member provides."""
    return (_rng(seed, "initial").standard_normal(size) * 0.1).astype(np.float32)


def synthetic_examples(participant: str) -> int:
    """The aggregation weight a participant declares (10-99, fixed per name)."""
    return 10 + zlib.crc32(participant.encode()) % 90


class LoopStub:
    """A blocking ``ParticipantService`` stub whose calls run on one asyncio loop over one ``grpc.aio`` channel.

    A thread blocked in a call of gRPC's blocking stub wakes 10 times a second to check for interrupts, so 250
    participant threads per process were the most that did not starve each other of the GIL (10,000 of them,
    in 40 processes, put the machine's load average past 100).  Here a calling thread waits on a plain future
    and the one loop thread does the work.  Errors are ``grpc.aio.AioRpcError``s, ``grpc.RpcError``s with the blocking
    stub's statuses (``blocking_status``), so ``GrpcLink``'s retries treat them alike.  Only for an ``--insecure`` coordinator: every
    call names its caller in its metadata, over the one connection.
    """

    #: The server-streaming methods: their messages are collected and handed back as an iterator.
    STREAMS = frozenset({"DownloadGlobal", "DownloadCheck"})

    def __init__(self, target: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="grpc-aio-loop", daemon=True)
        self.thread.start()

        async def connect() -> grpc.aio.Channel:
            return grpc.aio.insecure_channel(target, options=channel_options())

        self.channel = self._run(connect())
        self.stub = participant_pb2_grpc.ParticipantServiceStub(self.channel)

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        try:
            return asyncio.run_coroutine_threadsafe(work, self.loop).result()
        except grpc.aio.AioRpcError as exc:
            raise blocking_status(exc) from exc

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.stub, name)

        async def collect(request: Any, **options: Any) -> list[Any]:
            return [message async for message in method(request, **options)]

        async def once(request: Any, **options: Any) -> Any:
            return await method(request, **options)

        if name in self.STREAMS:
            return lambda request, **options: iter(self._run(collect(request, **options)))
        return lambda request, **options: self._run(once(request, **options))

    def close(self) -> None:
        self._run(self.channel.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class SyntheticParticipant:
    def __init__(self, link: CoordinatorLink, name: str, job: str, vector_size: int, seed: int = 0,
                 train_s: float = 0.0) -> None:
        """``train_s``: seconds each update takes to make, standing in for training (0: none)."""
        self.link = link
        self.name = name
        self.job = job
        self.vector_size = vector_size
        self.seed = seed
        self.train_s = train_s
        self.num_examples = synthetic_examples(name)
        self.info: JoinInfo | None = None
        self.updates = 0

    def join(self) -> JoinInfo:
        self.info = self.link.join(self.job, self.num_examples, 1, self.vector_size)
        if self.info.provide_initial_prompt:
            self.link.upload(Payload(self.info.job_id, 0, FLOAT32, self.vector_size,
                                     encode_vector(synthetic_initial(self.seed, self.vector_size))))
        return self.info

    def update(self, round_: int) -> Payload:
        assert self.info is not None
        delta = synthetic_delta(self.seed, self.name, round_, self.vector_size)
        return Payload(self.info.job_id, round_, FLOAT32, self.vector_size, encode_vector(delta), self.num_examples)

    def step(self, wait_s: float = 5.0) -> Task:
        """Fetch one task and carry it out (downloading the global as a real participant would)."""
        assert self.info is not None
        task = self.link.get_task(self.info.job_id, wait_s)
        if task.kind is TaskKind.EVALUATE:
            self.link.download(self.info.job_id, task.global_version)
            self.link.report(self.info.job_id, task.global_version, {"loss": 0.0}, 1)
        elif task.kind is TaskKind.TRAIN:
            self.link.download(self.info.job_id, task.global_version)
            time.sleep(self.train_s)
            self.link.upload(self.update(task.round))
            self.updates += 1
        return task

    def run(self, wait_s: float = 10.0) -> None:
        """Work until the job is done; a task the round no longer wants is dropped, as the daemon does."""
        if self.info is None:
            self.join()
        while True:
            try:
                if self.step(wait_s).kind is TaskKind.DONE:
                    return
            except ROUND_MOVED_ON as exc:
                log.warning("task dropped: the round moved on", participant=self.name, reason=str(exc))


def main(argv: list[str] | None = None) -> int:
    from fedprompt.logs import configure
    from fedprompt.participant.grpc_link import GrpcLink, coordinator_addresses

    parser = argparse.ArgumentParser(prog="python -m participant.synthetic", description=__doc__)
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--job", required=True)
    parser.add_argument("--prefix", default="synthetic")
    parser.add_argument("--first", type=int, default=0, help="index of the first participant name")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--vector-size", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--give-up-after", type=float, default=120.0)
    parser.add_argument("--train-s", type=float, default=0.0, help="seconds each update takes (default 0)")
    args = parser.parse_args(argv)
    configure("warning")
    errors: list[str] = []
    lock = threading.Lock()
    stubs = [LoopStub(address) for address in coordinator_addresses(args.coordinator)]

    def work(index: int) -> None:
        name = f"{args.prefix}-{index:04d}"
        link = GrpcLink(args.coordinator, name, give_up_after_s=args.give_up_after, stubs=stubs)
        try:
            SyntheticParticipant(link, name, args.job, args.vector_size, args.seed, args.train_s).run()
        except ERRORS as exc:
            log.warning("participant failed", participant=name, error=type(exc).__name__, reason=str(exc))
            with lock:
                errors.append(f"{name}: {exc}")
        finally:
            link.close()

    began = time.perf_counter()
    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(args.first, args.first + args.count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for stub in stubs:
        stub.close()
    print(json.dumps({"participants": args.count, "errors": errors, "seconds": round(time.perf_counter() - began, 2)}),
          flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
