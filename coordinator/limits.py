"""Call limits: a per-identity token bucket for call rate, and counters for concurrent uploads, per identity and
across identities.

A token bucket (refill ``rate`` tokens per second up to ``burst``, one token per call) lets a participant
make its normal bursts of calls (evaluate, download, upload) while bounding what a misbehaving or
compromised identity can make the coordinator do.  An upload holds its slot from before its header is read
until its stream ends (completed, refused, or cut off by the upload timeout), so a client that opens streams
and stalls holds at most ``max_uploads`` of them per certificate and ``max_uploads_total`` in all: what the
coordinator buffers for uploads stays bounded however many certificates stall at once.  Pure Python, no grpc:
the servicers' gate calls it.
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
    """Refuses (``RateLimited``) calls beyond ``rate`` per second sustained / ``burst`` at once, per identity, and
    uploads beyond ``max_uploads`` at once per identity or ``max_uploads_total`` at once in all."""

    def __init__(self, rate: float, burst: int, max_uploads: int, max_uploads_total: int,
                 clock: Callable[[], float] = time.monotonic, max_identities: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_uploads = max_uploads
        self.max_uploads_total = max_uploads_total
        self.clock = clock
        self.max_identities = max_identities
        self._buckets: dict[str, _Bucket] = {}
        self._uploads: dict[str, int] = {}
        self._total = 0

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
            raise RateLimited(f"more than {self.rate:g} calls per second (burst {self.burst}); retry later",
                              retry_after_s=(1.0 - bucket.tokens) / self.rate)
        bucket.tokens -= 1.0

    @contextmanager
    def upload(self, identity: str) -> Iterator[None]:
        """Hold one of the identity's ``max_uploads`` concurrent upload slots, and one of the ``max_uploads_total``
        shared by all, for the duration of a stream."""
        active = self._uploads.get(identity, 0)
        if active >= self.max_uploads:
            raise RateLimited(f"already {active} uploads in progress (at most {self.max_uploads})")
        if self._total >= self.max_uploads_total:
            raise RateLimited(f"the coordinator already receives {self._total} uploads (at most "
                              f"{self.max_uploads_total} at once); retry later")
        self._uploads[identity] = active + 1
        self._total += 1
        try:
            yield
        finally:
            self._total -= 1
            left = self._uploads[identity] - 1
            if left:
                self._uploads[identity] = left
            else:
                del self._uploads[identity]

    def uploads_in_progress(self, identity: str | None = None) -> int:
        """How many upload slots ``identity`` holds now, or all identities together (``None``)."""
        return self._total if identity is None else self._uploads.get(identity, 0)
