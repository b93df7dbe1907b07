"""What the rounds tell an observer as it happens (rounds closed, updates taken or refused, bytes, the Gram
step's time), so that metrics can be counted where the events are without the domain importing an exporter.

``RoundEvents`` ignores every event: jobs built without an observer (simulations, unit tests) use it, and
``coordinator.metrics`` overrides it for the Prometheus endpoint."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from fedprompt.errors import ERRORS


class RoundEvents:
    """An observer of every job's rounds; each method is called on the coordinator's event loop thread."""

    def round_completed(self, job_id: str, seconds: float) -> None:
        """An attempt stored a new global version ``seconds`` after it opened."""

    def round_failed(self, job_id: str) -> None:
        """An attempt closed without a new version (the round is retried or the job pauses)."""

    def update_accepted(self, job_id: str, num_bytes: int) -> None:
        """A selected member's update of ``num_bytes`` was folded into the open attempt."""

    def updates_rejected(self, job_id: str, reason: str, count: int = 1) -> None:
        """``count`` updates were refused: at upload (``reason`` is the error's type) or by a defence (its name)."""

    @contextlib.contextmanager
    def refusing(self, job_id: str) -> Iterator[None]:
        """Around an upload's checks: a deliberate refusal is counted by its error's type, then raised on."""
        try:
            yield
        except ERRORS as exc:
            self.updates_rejected(job_id, type(exc).__name__)
            raise

    def served(self, job_id: str, num_bytes: int) -> None:
        """A member downloaded ``num_bytes`` of a global version."""

    def gram_computed(self, job_id: str, seconds: float) -> None:
        """An encrypted Gram matrix took ``seconds`` to compute."""
