"""Checking an encrypted round before its aggregate becomes a global version: two key holders' verdicts.

The coordinator cannot tell a ciphertext under another key (or of out-of-range values) from an honest one,
and one such update, folded into the sum, turns the aggregate into garbage for every key holder and every
version built on it.  So an encrypted attempt closes in two steps (``coordinator.rounds``, state CHECKING):

1. **aggregate**: two key holders decrypt the candidate aggregate and report whether it is usable under the
   job key and the whole number in its weight slot (``fedprompt.crypto.audit.check``).  Only if both say it
   is usable and the weight equals what the upload headers declared is it stored as the next version.
2. **audit**, when the aggregate fails and the attempt kept its updates (after a first failure, the job's
   accumulator keeps them, ``Accumulator.audit``): every update is masked by the coordinator
   (``fedprompt.crypto.audit.mask``) and the two key holders check each one alone; an update that fails, or
   whose weight is not the one its header declared, comes from a culprit, which the round machine records
   like a robust rejection and quarantines.  No key holder sees an individual update unmasked.

If the two checkers' verdicts differ, one of them lies or is broken, and nothing is decided (fail closed).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence

from fedprompt.crypto.audit import CHECKERS, Verdict
from fedprompt.errors import DecryptorDisagreement, DuplicateUpdate, InvalidRequest, NotSelected


class Stage(enum.Enum):
    AGGREGATE = "aggregate"
    AUDIT = "audit"


class CheckRound:
    """One attempt's check: the bundle sent to the checkers, the weights each part must show, their answers."""

    def __init__(self, stage: Stage, bundle: bytes, expected: Sequence[float], checkers: Sequence[str],
                 owners: Sequence[str] = ()) -> None:
        """``owners`` names the member behind each masked part (audit stage only)."""
        if len(set(checkers)) != CHECKERS:
            raise InvalidRequest(f"a check needs {CHECKERS} distinct key holders")
        self.stage = stage
        self.bundle = bundle
        self.expected = tuple(expected)
        self.checkers = tuple(checkers)
        self.owners = tuple(owners)
        self.answers: dict[str, tuple[Verdict, ...]] = {}

    def awaiting(self, participant_id: str) -> bool:
        return participant_id in self.checkers and participant_id not in self.answers

    @property
    def answered(self) -> bool:
        return len(self.answers) == CHECKERS

    def request(self, participant_id: str) -> bytes:
        """The bundle, for the chosen checkers only."""
        if participant_id not in self.checkers:
            raise NotSelected(f"{participant_id} is not a checker of this round")
        return self.bundle

    def answer(self, participant_id: str, verdicts: Sequence[Verdict]) -> None:
        """Store one checker's verdicts (one per part, finite weights) before anything is decided."""
        if participant_id not in self.checkers:
            raise NotSelected(f"{participant_id} is not a checker of this round")
        if participant_id in self.answers:
            raise DuplicateUpdate(f"{participant_id} already answered this round's check")
        if len(verdicts) != len(self.expected) or not all(math.isfinite(v.weight) for v in verdicts):
            raise InvalidRequest(f"a check of {len(self.expected)} parts needs {len(self.expected)} verdicts with "
                                 "finite weights")
        self.answers[participant_id] = tuple(verdicts)

    def failed(self) -> list[int]:
        """The parts that are not usable or do not show the weight they must, if both checkers agree on every
        verdict; ``DecryptorDisagreement`` otherwise."""
        first, second = (self.answers[p] for p in self.checkers)
        if first != second:
            differ = sum(a != b for a, b in zip(first, second, strict=True))
            raise DecryptorDisagreement(f"checkers {self.checkers[0]} and {self.checkers[1]} disagree on {differ} of "
                                        f"{len(first)} verdicts")
        return [i for i, (v, w) in enumerate(zip(first, self.expected, strict=True)) if not v.valid or v.weight != w]
