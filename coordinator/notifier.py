"""Wakes long-polling ``GetTask`` calls when job state changes, instead of having them spin."""

from __future__ import annotations

import asyncio


class Notifier:
    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.closed = False

    def close(self) -> None:
        """Shutting down: wake every waiter now and make later waits return at once."""
        self.closed = True
        self.notify()

    def notify(self) -> None:
        """Wake every waiter; each re-checks its own condition."""
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        """Return on the next notification or after ``timeout`` seconds, whichever comes first."""
        if self.closed:
            return
        event = self._event
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
