"""Where a round's heavy homomorphic step runs: off the event loop in the server, inline everywhere else.

The round engine is single-threaded: every RPC handler and the ticker drive it from one asyncio loop.  An
encrypted Gram matrix costs ciphertext multiplications and rotations for every pair of updates (on 2 cores,
0.5 s for six updates of the demo's prompt, 4.3 s for twenty: quadratic in their number).  Computed inline it
would stall every call the coordinator serves, heartbeats and other jobs' uploads included.  The engine
therefore hands the step to an ``Offload``: ``work`` (which only reads state the round has frozen) runs
wherever the offload chooses, and ``done`` receives its result, or the exception it raised, back on the
engine's thread.  SEAL releases the GIL while it computes, so a worker thread keeps the loop responsive
(measured on 2 cores: a 10 ms timer fired at most 21 ms apart during the twenty-update step).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Offload(Protocol):
    def __call__(self, work: Callable[[], T], done: Callable[[T | Exception], None]) -> None: ...


def inline(work: Callable[[], T], done: Callable[[T | Exception], None]) -> None:
    """Run ``work`` now and call ``done`` at once: simulations and tests that drive the engine directly."""
    try:
        result: T | Exception = work()
    except Exception as exc:  # handed to the engine, which fails the round attempt with the reason
        result = exc
    done(result)


class WorkerThread:
    """Run ``work`` on one worker thread (jobs' heavy steps queue rather than compete for the cores) and call
    ``done`` on the calling event loop, then ``notify`` so long-polling calls see the new state."""

    def __init__(self, notify: Callable[[], None]) -> None:
        self.notify = notify
        self.closed = False
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="he-step")

    def __call__(self, work: Callable[[], T], done: Callable[[T | Exception], None]) -> None:
        future = asyncio.get_running_loop().run_in_executor(self.executor, work)

        def finished(f: asyncio.Future[T]) -> None:
            if f.cancelled() or self.closed:  # shutting down: the store may be closed already
                return
            error = f.exception()
            done(error if isinstance(error, Exception) else f.result())
            self.notify()

        future.add_done_callback(finished)

    def close(self) -> None:
        """Stop taking work and drop results still to come: recovery closes their rounds at the next start."""
        self.closed = True
        self.executor.shutdown(wait=False, cancel_futures=True)


def followed(offload: Offload, after: Callable[[], None]) -> Offload:
    """``offload``, with ``after()`` called once each result is handed back (the job settles its rounds then:
    a Gram step that failed closes its attempt at once, not at the next tick)."""
    def run(work: Callable[[], T], done: Callable[[T | Exception], None]) -> None:
        def finished(result: T | Exception) -> None:
            done(result)
            after()

        offload(work, finished)

    return run
