"""Per-identity call limits: a token bucket for call rate and a counter for concurrent uploads.

A token bucket (refill ``rate`` tokens per second up to ``burst``, one token per call) lets a participant
make its normal bursts of calls (evaluate, download, upload) while bounding what a misbehaving or
compromised identity can make the coordinator do.  Pure Python, no grpc: the servicers' gate calls it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from fedprompt.errors import RateLimited


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class CallLimiter:
    """Refuses (``RateLimited``) calls beyond ``rate`` per second sustained / ``burst`` at once, per identity."""

    def __init__(self, rate: float, burst: int, max_uploads: int, clock: Callable[[], float] = time.monotonic,
                 max_identities: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_uploads = max_uploads
        self.clock = clock
        self.max_identities = max_identities
        self._buckets: dict[str, _Bucket] = {}
        self._uploads: dict[str, int] = {}

    def take(self, identity: str) -> None:
        now = self.clock()
        bucket = self._buckets.get(identity)
        if bucket is None:
            if len(self._buckets) >= self.max_identities:
                self._buckets.clear()  # bounded memory; only authenticated identities ever get here
            bucket = self._buckets[identity] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens < 1.0:
            raise RateLimited(f"more than {self.rate:g} calls per second (burst {self.burst}); retry later")
        bucket.tokens -= 1.0

    @contextmanager
    def upload(self, identity: str) -> Iterator[None]:
        """Hold one of the identity's ``max_uploads`` concurrent upload slots for the duration of a stream."""
        active = self._uploads.get(identity, 0)
        if active >= self.max_uploads:
            raise RateLimited(f"already {active} uploads in progress (at most {self.max_uploads})")
        self._uploads[identity] = active + 1
        try:
            yield
        finally:
            left = self._uploads[identity] - 1
            if left:
                self._uploads[identity] = left
            else:
                del self._uploads[identity]
