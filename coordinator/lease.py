"""Coordinator failover on a shared database: one replica is active and holds a lease, the others stand by.

The lease is one row of the store (``coordinator_lease``): its holder, a fencing token, and when it lapses, in
the database's clock, so replicas whose host clocks differ agree on it.  A standby polls until the lease
lapses, takes it (the token goes up by one), and only then opens its jobs from the store, exactly as a
restart does (``coordinator.recovery``).  The active replica renews the lease every ``renew_s``.  Every write
transaction first checks that the replica's token is still the lease's and holds the lease row until it
commits (``Store.fence``): a takeover waits for a write in flight, and a deposed replica (paused by the
kernel or cut off by a partition, then waking up) writes nothing once a standby has taken over.  This is the
fencing token of Chubby's sequencers (Burrows, "The Chubby lock service", OSDI 2006) and of Kleppmann, "How to
do distributed locking" (2016): the storage itself refuses the stale holder, whatever the holder believes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from fedprompt.coordinator.store import Store
from fedprompt.errors import Deposed

log = structlog.get_logger("coordinator.lease")


class Lease:
    """This replica's claim on the lease: ``wait`` stands by until it is active, ``renew`` keeps it."""

    def __init__(self, store: Store, holder: str, ttl_s: float) -> None:
        self.store = store
        self.holder = holder
        self.ttl_s = ttl_s
        self.token: int | None = None
        self._renewed = 0.0  # time.monotonic() of the last renewal

    @property
    def renew_s(self) -> float:
        """How often the active replica renews: three tries before its lease lapses."""
        return self.ttl_s / 3

    def wait(self, stopped: Callable[[], bool] = lambda: False, sleep: Callable[[float], None] = time.sleep) -> int | None:
        """Stand by until the lease is free, take it and fence the store with its token (returned); None when
        ``stopped`` says so first.  A store that cannot be reached meanwhile is logged and tried again."""
        announced, unreachable = False, ""
        while not stopped():
            try:
                token = self.store.acquire_lease(self.holder, self.ttl_s)
            except self.store.unavailable_error as exc:  # the database is down or restarting: keep standing by
                if str(exc) != unreachable:
                    log.warning("standing by: the store is unreachable, trying again", replica=self.holder,
                                reason=str(exc).strip()[:200])
                unreachable = str(exc)
                sleep(self.renew_s)
                continue
            if token is not None:
                self.token, self._renewed = token, time.monotonic()
                self.store.fence(token)
                log.info("lease taken: this replica is active", replica=self.holder, token=token, ttl_s=self.ttl_s)
                return token
            if not announced:
                holder, token, left = self.store.lease()
                log.info("standing by: another replica holds the lease", replica=self.holder, active=holder,
                         token=token, lapses_in_s=round(left, 1))
                announced = True
            sleep(self.renew_s)
        return None

    def renew(self, now: Callable[[], float] = time.monotonic) -> None:
        """Extend the lease once ``renew_s`` has passed since the last time (the ticker calls this every tick);
        ``Deposed`` when another replica has taken it (this one must stop)."""
        if self.token is None or now() - self._renewed < self.renew_s:
            return
        if not self.store.renew_lease(self.token, self.ttl_s):
            raise Deposed(f"replica {self.holder}: the lease (token {self.token}) was taken over by "
                          f"{self.store.lease()[0]}")
        self._renewed = now()

    def release(self) -> None:
        """Give the lease up on a graceful stop, so a standby takes over at once."""
        if self.token is not None:
            self.store.release_lease(self.token)
            log.info("lease released", replica=self.holder, token=self.token)
