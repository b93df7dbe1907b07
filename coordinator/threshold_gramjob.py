"""A Gram-defended threshold job's rounds (``docs/he.md``, "The encrypted-Gram defence under threshold keys"):
the job's hook from ``coordinator.runtime.choose_accumulator`` into the domain objects of
``coordinator.threshold_gramkeys`` (the collective evaluation keys) and ``coordinator.threshold_gramround`` (one
round attempt).

The round machine (``coordinator.rounds``) drives a threshold attempt as it drives the seeded one: the fold takes
the uploads, ``close`` names t online decryptors, the attempt waits in DECRYPTING for their shares
(``TaskKind.SHARE``), and the fold's ``close`` returns the version to store.  Here that wait has two phases on
the same t decryptors: first each recomputes the Gram matrix of the attested uploads and sends its share; with
the last one the coordinator reads the scalars and judges them with the job's ``GramDefence`` (an uploader past
``he.gram_norm_bound`` rejected whatever the verdict); then each decryptor sends its masked share of the accepted
sum, which the coordinator adds key-less into the stored version (``fedprompt.wire.threshold``, its combined
part ``threshold_masked.combine_sum``'s uncompressed download), which only members open.  A verdict that
accepts fewer than ``job.min_participants`` updates fails the attempt instead, as a round short of them does
(``coordinator.rounds``): members decrypt no sum of fewer (``ThresholdKeys._check_uploaders``), so the coordinator
never asks.  The Gram matrix is computed inline at the close (0.3 s at n = 3, 3.1 s at n = 10).
"""

from __future__ import annotations

from collections.abc import Callable

from fedprompt.coordinator.accumulators import Fold, Outcome, ThresholdAccumulator, ThresholdFold
from fedprompt.coordinator.aggregation import GramDefence, RoundDecision
from fedprompt.coordinator.store import Store
from fedprompt.coordinator.threshold import (
    Decryption,
    RoundMemory,
    ThresholdKeyRelay,
    ThresholdRelay,
    ThresholdRound,
)
from fedprompt.coordinator.threshold_gramkeys import GramKeyRelay
from fedprompt.coordinator.threshold_gramround import ThresholdGramRound
from fedprompt.crypto import threshold_masked
from fedprompt.crypto.errors import InvalidCiphertext
from fedprompt.errors import FedPromptError, InvalidUpdate, NotSelected, PreconditionFailed
from fedprompt.protocol import Payload
from fedprompt.wire.threshold import ThresholdVersion, pack_version
from fedprompt.wire.threshold_gram import GRAM, REQUEST, SUM, GramRequest, pack_request, unpack_upload

#: Room for an upload's attestation and its container beside the ciphertext.
_ATTESTATION_ROOM = 16384


class GramThresholdKeyRelay(ThresholdKeyRelay):
    """A threshold job's key relay with its collective Gram evaluation keys (``GramKeyRelay``): a member holds
    the job's keys once both are complete."""

    def __init__(self, job_id: str, relay: ThresholdRelay, store: Store) -> None:
        super().__init__(job_id, relay, store)
        self.grams = GramKeyRelay(relay, store)

    def restore(self) -> None:
        super().restore()
        self.grams = GramKeyRelay.restore(self.relay, self.store)

    def holds(self, participant_id: str) -> bool:
        return super().holds(participant_id) and self.grams.ready

    def ready(self) -> bool:
        return super().ready() and self.grams.ready

    def progress(self) -> tuple[object, ...]:
        return (*super().progress(), len(self.grams.arrivals))


class GramDecryption(Decryption):
    """The two-phase wait of a Gram round attempt on its t decryptors: Gram shares, the verdict, sum shares."""

    def __init__(self, machine: ThresholdGramRound, decryptors: tuple[str, ...], defence: GramDefence,
                 minimum: int) -> None:
        super().__init__(machine.round, machine.attempt, machine.order, 0.0, b"", decryptors, machine.relay,
                         machine.vector_size)
        self.machine, self.defence, self.minimum = machine, defence, minimum
        self.phase = GRAM
        self.failure = ""
        self.decision: RoundDecision | None = None
        self.metrics: dict[str, float] = {}
        self._shape = (0, 0)

    def request(self, who: str) -> GramRequest:
        if not self.awaiting(who):
            raise NotSelected(f"{who} has no share to make for round {self.round} attempt {self.attempt}")
        accepted = {w: self.machine.weights[w] for w in self.uploaders} if self.phase == SUM else {}
        return GramRequest(self.phase, self.round, self.attempt, self.decryptors,
                           tuple(self.machine.request(who)), accepted)

    def submit(self, who: str, masked: bytes) -> None:
        """A decryptor's share of the phase it is in; the last Gram share brings the verdict and the sum."""
        if not self.awaiting(who):
            raise NotSelected(f"{who} has no share to make for round {self.round} attempt {self.attempt}")
        if self.phase == SUM:
            try:
                threshold_masked.parse_share(self.relay.context, masked, self.relay.index(who), *self._shape)
            except InvalidCiphertext as exc:
                raise InvalidUpdate(f"the masked share of {who} of round {self.round}'s sum is refused: {exc}") from exc
            self.shares[who] = masked
            return
        self.machine.submit(who, masked)
        if self.machine.complete:
            self._judge()

    def _judge(self) -> None:
        try:
            verdict, metrics, breached = self.machine.judge(self.defence)
        except FedPromptError as exc:
            self.failure = f"{self.defence.name} refused: {exc}"
            return
        if len(verdict.accepted) < self.minimum:  # the members' floor (``ThresholdKeys._check_uploaders``)
            self.failure = (f"{self.defence.name} accepted {len(verdict.accepted)} of the {len(self.machine.order)} "
                            f"updates of round {self.round}, fewer than job.min_participants = {self.minimum}: "
                            "members decrypt no smaller sum (it could reveal one member's update)")
            self.relay.log.warning("Gram scalars judged: too few updates accepted to decrypt their sum",
                                   round=self.round, attempt=self.attempt, accepted=list(verdict.accepted),
                                   rejected=list(verdict.rejected), over_norm_bound=list(breached))
            return
        self.decision, self.metrics = verdict, {**metrics, "over_norm_bound": float(len(breached))}
        self.uploaders = tuple(sorted(verdict.accepted))
        self.declared_weight = float(sum(self.machine.weights[w] for w in self.uploaders))
        self.total = self.machine.fold(self.uploaders)
        sums = self.relay.context.parse_sum(self.total, self.vector_size)
        self._shape = (len(sums), sums[0].coeff_modulus_size())  # a share's chunks and primes
        self.phase = SUM
        self.relay.log.info("Gram scalars judged: accepted sum sent for threshold decryption", round=self.round,
                            attempt=self.attempt, accepted=list(self.uploaders), rejected=list(verdict.rejected),
                            over_norm_bound=list(breached))

    def _answered(self) -> dict[str, bytes]:
        return self.shares if self.phase == SUM else self.machine.shares

    def awaiting(self, who: str) -> bool:
        return not self.failure and who in self.decryptors and who not in self._answered()

    @property
    def complete(self) -> bool:
        return bool(self.failure) or (self.phase == SUM and len(self.shares) == len(self.decryptors))

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(m for m in self.decryptors if self.awaiting(m))

    def version(self) -> bytes:
        if self.failure or not self.complete:
            raise PreconditionFailed(f"round {self.round} attempt {self.attempt} has no accepted sum decrypted")
        combined = self.machine.download(self.total, self.shares)
        return pack_version(ThresholdVersion(self.round, self.attempt, self.uploaders, self.decryptors,
                                             self.declared_weight, combined))


class GramThresholdRound(ThresholdRound):
    """A threshold attempt whose uploads are attested public-key ciphertexts kept for their Gram matrix."""

    def __init__(self, keys: GramThresholdKeyRelay, round_: int, vector_size: int, attempt: int,
                 memory: RoundMemory, norm_bound: float, defence: GramDefence, minimum: int) -> None:
        self.grams, self.norm_bound, self.defence, self.minimum = keys.grams, norm_bound, defence, minimum
        super().__init__(keys.relay, round_, vector_size, attempt, memory)

    def _open(self) -> None:
        self.machine = ThresholdGramRound(self.grams, self.round, self.vector_size, self.norm_bound, self.attempt)
        self.weights = self.machine.weights
        self.decryption: Decryption | None = None

    def add(self, who: str, attempt: int, ciphertext: bytes, weight: float) -> None:
        upload, attestation = unpack_upload(ciphertext)
        self.machine.add(who, attempt, upload, weight, attestation)

    def close(self, online: Callable[[str], bool]) -> Decryption | None:
        """Freeze the uploads, name t online decryptors (those that missed the last attempt last) and compute the
        packed Gram ciphertext (inline).  The round's ``bound`` is not consulted: the set a sum share is of is the
        verdict's, known only after the decryptors are named (a bound member refuses another accepted set)."""
        decryptors = self.machine.close(online, self.memory.missed)
        if decryptors is None:
            return None
        self.decryption = GramDecryption(self.machine, decryptors, self.defence, self.minimum)
        self.relay.log.info("Gram matrix sent for threshold decryption", round=self.round, attempt=self.attempt,
                            uploaders=len(self.machine.order), decryptors=list(decryptors))
        return self.decryption


class GramThresholdFold(ThresholdFold):
    def close(self, postponed: str = "") -> Outcome:
        decryption = self.threshold.decryption if self.threshold is not None else None
        if isinstance(decryption, GramDecryption) and decryption.failure:
            return Outcome(refusal=decryption.failure)
        try:
            outcome = super().close(postponed)
        except InvalidUpdate as exc:  # the sum's shares do not combine: the attempt fails, the job goes on
            return Outcome(refusal=str(exc))
        if outcome.refusal or not isinstance(decryption, GramDecryption):
            return outcome
        return Outcome(outcome.data, decryption.metrics, decryption.decision, weight=outcome.weight)


class GramThresholdAccumulator(ThresholdAccumulator):
    """Attested public-key threshold uploads judged on their threshold-decrypted Gram matrix, then summed."""

    def __init__(self, keys: GramThresholdKeyRelay, vector_size: Callable[[], int], weigh: Callable[[int], float],
                 defence: GramDefence, norm_bound: float, minimum: int) -> None:
        super().__init__(keys, vector_size, weigh)
        self.gram_keys, self.defence, self.norm_bound, self.minimum = keys, defence, norm_bound, minimum

    def max_bytes(self, vector_size: int) -> int:
        return 2 * self.keys.require_context().expected_size(vector_size) + _ATTESTATION_ROOM

    def fold(self, number: int, attempt: int = 1) -> Fold:
        machine = GramThresholdRound(self.gram_keys, number, self.vector_size(), attempt, self.memory,
                                     self.norm_bound, self.defence, self.minimum)
        return GramThresholdFold(machine, self.weigh)


def request_payload(job_id: str, decryption: GramDecryption, who: str) -> Payload:
    """What decryptor ``who`` fetches for its share of the phase the attempt is in (``KeyDoor.decryption``)."""
    data = pack_request(decryption.request(who))
    return Payload(job_id, decryption.round, REQUEST, decryption.vector_size, data)

