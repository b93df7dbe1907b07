"""The server's offload: the costly homomorphic step runs on a worker thread, its outcome comes back on the
event loop (the round engine's only thread), errors arrive as values, and nothing arrives after close."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from fedprompt.coordinator.offload import WorkerThread, inline


async def _run(worker: WorkerThread, work: Any) -> dict[str, Any]:
    seen: dict[str, Any] = {"loop": threading.get_ident()}
    finished = asyncio.Event()

    def wrapped() -> Any:
        seen["work"] = threading.get_ident()
        return work()

    def done(outcome: Any) -> None:
        seen["done"], seen["outcome"] = threading.get_ident(), outcome
        finished.set()

    worker(wrapped, done)
    await asyncio.wait_for(finished.wait(), 30)
    return seen


def test_work_runs_off_the_loop_and_its_result_comes_back_on_it_with_a_notification() -> None:
    notified: list[int] = []
    worker = WorkerThread(lambda: notified.append(1))
    seen = asyncio.run(_run(worker, lambda: b"packed gram"))
    worker.close()
    assert seen["work"] != seen["loop"] and seen["done"] == seen["loop"]
    assert seen["outcome"] == b"packed gram" and notified == [1]


def test_an_error_in_the_work_reaches_done_as_a_value() -> None:
    def fails() -> bytes:
        raise ValueError("scale out of bounds")

    worker = WorkerThread(lambda: None)
    seen = asyncio.run(_run(worker, fails))
    worker.close()
    assert isinstance(seen["outcome"], ValueError) and str(seen["outcome"]) == "scale out of bounds"
    outcomes: list[Any] = []
    inline(fails, outcomes.append)
    assert isinstance(outcomes[0], ValueError)


def test_a_closed_worker_delivers_nothing() -> None:
    async def main() -> list[Any]:
        worker = WorkerThread(lambda: None)
        release = threading.Event()
        outcomes: list[Any] = []
        worker(lambda: release.wait(10), outcomes.append)
        worker.close()  # shutting down while the step runs: the store may be gone when it ends
        release.set()
        await asyncio.to_thread(worker.executor.shutdown, True)  # the step has ended and handed back its result
        for _ in range(3):
            await asyncio.sleep(0)  # the loop runs the callbacks that result scheduled
        return outcomes

    assert asyncio.run(main()) == []
