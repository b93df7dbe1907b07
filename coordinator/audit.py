"""The admin audit trail: every admin action the coordinator is asked to do, whoever asked, and how it ended.

An operator reviewing a job needs to see attempts as well as changes, so a refused action is recorded with
the refusing error's class as its outcome, and the error still reaches the caller.  Arguments are stored as
JSON with each string cut to ``MAX_ARGUMENT`` characters: a job's whole TOML does not belong in every row.
A revocation is recorded too, as action ``revoke`` by ``REVOKER`` on every job (an empty job id), when the
coordinator notices it in its revocation list (at the next call after ``admin ca revoke`` rewrote the file).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from fedprompt.coordinator.store import Store
from fedprompt.errors import ERRORS
from fedprompt.protocol import AuditView

#: The identity a revocation is recorded under: the federation CA signs the revocation list, and the coordinator,
#: which only sees the list change, cannot name the operator who ran ``admin ca revoke``.
REVOKER = "ca"
#: Characters kept of each string argument.
MAX_ARGUMENT = 200
#: The most rows one listing returns (``ListAudit`` with no limit, or a larger one).
MAX_LISTED = 10_000


@dataclass
class Entry:
    """An action being recorded; the servicer sets ``job_id`` once it knows the job's id (a create learns it
    only on success, other actions may name a job by its name)."""

    job_id: str
    arguments: dict[str, object] = field(default_factory=dict)


class AuditTrail:
    """Records admin actions in the store, one row each, written when the action ends."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @contextmanager
    def action(self, identity: str, action: str, job_ref: str, **arguments: object) -> Iterator[Entry]:
        """Record ``action`` by ``identity``: ``ok`` when the block completes, else the error's class name."""
        entry = Entry(job_ref, {k: _clip(v) for k, v in arguments.items()})
        try:
            yield entry
        except ERRORS as exc:
            self._write(identity, action, entry, type(exc).__name__)
            raise
        self._write(identity, action, entry, "ok")

    def entries(self, job_id: str, limit: int) -> list[AuditView]:
        """The latest ``limit`` actions (0: up to ``MAX_LISTED``) on ``job_id`` (empty: every job), oldest first."""
        return self.store.audit(job_id, min(limit or MAX_LISTED, MAX_LISTED))

    def _write(self, identity: str, action: str, entry: Entry, outcome: str) -> None:
        self.store.record_audit(identity, action, entry.job_id, json.dumps(entry.arguments, sort_keys=True), outcome)


def _clip(value: object) -> object:
    return value[:MAX_ARGUMENT] if isinstance(value, str) else value
