"""Gram defences on encrypted updates: one round's kept ciphertexts, its encrypted Gram matrix, the two key
holders that decrypt it, their agreement, and the sum of the accepted ciphertexts.

Flow (driven by ``coordinator.runtime``): every update is parsed and kept (memory: one ciphertext set per
update, ~128 KB each for the demo); when the round closes the coordinator computes the packed Gram ciphertext
(``crypto.gram``), two key holders each decrypt it and return the ``n (n + 1) / 2`` scalars; only if both
answers agree (``crypto.gram.agreement_tolerance``) is the Gram matrix of the *deltas* formed and handed to
the very ``GramDefence.judge`` the plaintext path uses, and only the accepted ciphertexts are summed.

Weights: participants encrypt ``n_i * delta_i`` and 0 in the weight slot; dividing entry ``(u, v)`` by
``n_u n_v`` (the example counts of the upload headers, which plaintext FedAvg uses too) gives
``<delta_u, delta_v>``, and the coordinator adds the accepted ``sum n_i`` to the weight slot of the sum as a
plaintext.  Because the weight slot is encrypted as 0, the Gram matrix covers every slot that is summed: a
participant that puts something in its weight slot has it counted in its own norm and distances.

A lying (or broken) decryptor is caught by the second one; two colluding decryptors are not (see
docs/robustness.md).
"""

from __future__ import annotations

import random
import time
from collections.abc import Collection, Sequence

import numpy as np
import structlog
import tenseal.sealapi as seal

from fedprompt.crypto.ckks import PublicContext
from fedprompt.crypto.gram import GramEvaluator, add_weight, agreement_tolerance, pairs, to_matrix
from fedprompt.errors import DecryptorDisagreement, DuplicateUpdate, InvalidUpdate, NotSelected, PreconditionFailed

log = structlog.get_logger("coordinator.hegram")

#: Two independent key holders decrypt every Gram matrix.
DECRYPTORS = 2


def choose_decryptors(holders: Sequence[str], contributors: Collection[str], seed: str) -> tuple[str, ...]:
    """The two key holders that decrypt a round's Gram matrix, drawn (seeded) from the online ``holders`` that
    did not contribute to the round when two exist: a contributor that decrypts learns the inner products of
    the others' updates with its own.  ``PreconditionFailed`` when fewer than two holders are online."""
    outsiders = [p for p in holders if p not in contributors]
    pool = outsiders if len(outsiders) >= DECRYPTORS else list(holders)
    if len(pool) < DECRYPTORS:
        raise PreconditionFailed(f"an encrypted Gram matrix needs {DECRYPTORS} online key holders to decrypt it, "
                                 f"{len(pool)} online")
    return tuple(sorted(random.Random(seed).sample(pool, DECRYPTORS)))


class GramRound:
    """The encrypted-Gram state of one round attempt."""

    def __init__(self, context: PublicContext, evaluator: GramEvaluator, vector_size: int) -> None:
        self.context = context
        self.evaluator = evaluator
        self.vector_size = vector_size
        self.updates: dict[str, list[seal.Ciphertext]] = {}
        self.weights: dict[str, int] = {}
        self.order: tuple[str, ...] = ()
        self.decryptors: tuple[str, ...] = ()
        self.payload = b""
        self.failure = ""  # why the offloaded computation failed, for the round to close on
        self.answers: dict[str, np.ndarray] = {}
        self.gram_seconds = 0.0

    @property
    def started(self) -> bool:
        """Decryptors are chosen and the updates frozen: the round takes no more."""
        return bool(self.decryptors)

    @property
    def computed(self) -> bool:
        """The packed Gram ciphertext exists, so the decryptors can fetch it."""
        return bool(self.payload)

    def parse(self, data: bytes) -> list[seal.Ciphertext]:
        """Validate an encrypted update under the job's context (``InvalidCiphertext`` if it does not parse)."""
        if len(self.updates) >= self.context.params.max_summands:
            raise InvalidUpdate(f"the round already holds the {self.context.params.max_summands} updates these "
                                "parameters allow")
        return self.context.parse(data, self.context.key_id, self.vector_size)

    def add(self, participant_id: str, ciphertexts: list[seal.Ciphertext], weight: int) -> None:
        self.updates[participant_id] = ciphertexts
        self.weights[participant_id] = weight

    def discard(self, participant_id: str) -> None:
        self.updates.pop(participant_id, None)
        self.weights.pop(participant_id, None)

    def begin(self, decryptors: Sequence[str]) -> None:
        """Freeze the updates in hand and name who decrypts their Gram matrix; ``compute`` comes next."""
        if len(decryptors) != DECRYPTORS or len(set(decryptors)) != DECRYPTORS:
            raise PreconditionFailed(f"an encrypted Gram matrix needs {DECRYPTORS} distinct decryptors")
        self.order = tuple(self.updates)
        self.decryptors = tuple(decryptors)

    def compute(self) -> bytes:
        """The packed Gram ciphertext of the frozen updates.  The costly step: it only reads what ``begin``
        froze, so it may run on a worker thread (``coordinator.offload``) while the engine serves calls."""
        began = time.perf_counter()
        payload = self.evaluator.gram([self.updates[p] for p in self.order])
        self.gram_seconds = time.perf_counter() - began
        return payload

    @property
    def answered(self) -> bool:
        """Every decryptor answered: the round can read their agreed matrix (``agreed``)."""
        return len(self.answers) == DECRYPTORS

    def awaiting(self, participant_id: str) -> bool:
        """Whether ``participant_id`` is a decryptor that has not answered the computed matrix yet."""
        return self.computed and participant_id in self.decryptors and participant_id not in self.answers

    def request(self, participant_id: str) -> bytes:
        """The packed Gram ciphertext, for the chosen decryptors only."""
        if participant_id not in self.decryptors:
            raise NotSelected(f"{participant_id} is not a decryptor of this round's Gram matrix")
        return self.payload

    def answer(self, participant_id: str, scalars: Sequence[float]) -> bool:
        """Store one decryptor's scalars; True once every decryptor answered."""
        if participant_id not in self.decryptors:
            raise NotSelected(f"{participant_id} is not a decryptor of this round's Gram matrix")
        if participant_id in self.answers:
            raise DuplicateUpdate(f"{participant_id} already answered this round's Gram matrix")
        n = len(self.order)
        to_matrix(scalars, n)  # shape and finiteness, before the answer is kept
        self.answers[participant_id] = np.asarray(scalars, dtype=np.float64)
        return self.answered

    def agreed(self) -> np.ndarray:
        """The Gram matrix of the deltas, if both decryptors agree; ``DecryptorDisagreement`` otherwise."""
        first, second = (self.answers[p] for p in self.decryptors)
        tolerance = agreement_tolerance(self.context, np.maximum(np.abs(first), np.abs(second)), len(self.order))
        gap = np.abs(first - second)
        if gap.max(initial=0.0) > tolerance:
            worst = pairs(len(self.order))[int(np.argmax(gap))]
            raise DecryptorDisagreement(
                f"decryptors {self.decryptors[0]} and {self.decryptors[1]} disagree on {int((gap > tolerance).sum())} "
                f"of {gap.size} Gram entries (worst: updates of {self.order[worst[0]]} and {self.order[worst[1]]}, "
                f"beyond the tolerance {tolerance:.3g})")
        weights = np.array([self.weights[p] for p in self.order], dtype=np.float64)
        return to_matrix(first, len(self.order)) / np.outer(weights, weights)

    def fold(self, accepted: Sequence[str]) -> bytes:
        """The encrypted sum of the accepted updates with their total example count in the weight slot."""
        total = self.context.new_sum(self.vector_size)
        for participant_id in accepted:
            total.add(self.updates[participant_id])
        if total.total is None:
            raise InvalidUpdate("no accepted update to sum")
        add_weight(self.context, total.total, self.vector_size, float(sum(self.weights[p] for p in accepted)))
        return total.to_bytes()
