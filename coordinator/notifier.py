"""Wakes long-polling ``GetTask`` calls when job state changes, instead of having them spin.

A long-poll waits on its job.  A woken call re-checks its task and only returns when that task is no longer
to wait, so waking it is worth its cost only when something its task depends on changed.  ``changed`` is
told, after each participant call and on each tick, a summary of all that a job's waiting members' tasks
depend on (``coordinator.tasks.dispatch_state``) and wakes that job's waiters only when the summary moved:
a round of N updates and N metric reports wakes its up to N waiters a constant number of times, where
waking all of them on every call cost N re-checks per call, N^2 per round (measured: 5x the participants
cost 15x the round time).  ``notify`` still wakes every waiter, for the rare calls whose effect the summary
leaves out (admin actions, key relay, revocations) and for shutdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable


class Notifier:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}  # job -> the event its current waiters wait on
        self._states: dict[str, Hashable] = {}  # job -> the last summary ``changed`` was told
        self.closed = False
        self.wakeups = 0  # events set, each waking all of one job's waiters (for tests: O(1) per round)

    def close(self) -> None:
        """Shutting down: wake every waiter now and make later waits return at once."""
        self.closed = True
        self.notify()

    def notify(self) -> None:
        """Wake every waiter of every job; each re-checks its own condition."""
        events, self._events = self._events, {}
        for event in events.values():
            self._wake(event)

    def changed(self, job_id: str, state: Hashable) -> None:
        """Wake the waiters of ``job_id`` if ``state`` differs from the last one told for it (or none was)."""
        if job_id in self._states and self._states[job_id] == state:
            return
        self._states[job_id] = state
        event = self._events.pop(job_id, None)
        if event is not None:
            self._wake(event)

    def _wake(self, event: asyncio.Event) -> None:
        self.wakeups += 1
        event.set()

    async def wait(self, job_id: str, timeout: float) -> None:
        """Return on the next wake-up of ``job_id``'s waiters or after ``timeout`` seconds, whichever comes first."""
        if self.closed:
            return
        event = self._events.get(job_id)
        if event is None:
            event = self._events[job_id] = asyncio.Event()
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
