"""How one job's updates are checked, combined and turned into its next global version: one ``Accumulator``
chosen when the job is created, which opens a ``Fold`` for every round attempt.

* **plain** (``PlainAccumulator``): each update is decoded and checked against the global it started from;
  the job's aggregator combines the round's deltas when it closes, in participant-id order (so the same
  updates give the same float result whatever order they arrived in).  The encrypted sums below are
  order-independent as they are: ciphertext addition is exact modular arithmetic.
* **encrypted** (``EncryptedAccumulator``, ``he.enabled`` with a linear aggregator): each update is parsed
  under the job's public context and folded into the round's running ciphertext sum on arrival, so memory
  does not grow with the number of updates; the version stored is the encrypted aggregate
  (``sum n_i * delta_i`` and ``sum n_i``), which key holders decrypt and apply.
* **encrypted Gram** (``GramAccumulator``, ``he.enabled`` with a Gram defence): each update's ciphertexts
  are kept (``coordinator.hegram.GramRound``); at the close the round *decides* on their encrypted Gram
  matrix (two key holders decrypt its scalars), and only the accepted ciphertexts are summed.
* **threshold** (``ThresholdAccumulator``, ``he.mode = "threshold"``): each seeded upload is checked against
  its round attempt and folded key-less (``coordinator.threshold.ThresholdRound``); at the close t members
  make decryption shares masked for the members, and the version stored is the aggregate plus those shares,
  compressed key-less (``fedprompt.wire.threshold``), which only members unmask.  The initial prompt is sealed under the members'
  group key.
* **levelled** (``coordinator.levels``): one of the above per prompt level.

The round machine (``coordinator.rounds``) and the job's wiring (``coordinator.runtime``) never ask which
kind they hold: they add updates to the fold, hand it the agreed Gram matrix when it keeps a ``gram``, and
store the ``Outcome``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import structlog
import tenseal.sealapi as seal

from fedprompt.coordinator.aggregation import AggregateResult, Aggregator, Contribution, GramDefence, RoundDecision
from fedprompt.coordinator.hegram import GramRound
from fedprompt.coordinator.keys import JobKeys
from fedprompt.coordinator.store import Store
from fedprompt.coordinator.threshold import RoundMemory, ThresholdKeyRelay, ThresholdRound
from fedprompt.crypto.audit import mask
from fedprompt.crypto.ckks import ENCODING as CKKS
from fedprompt.crypto.ckks import EncryptedSum
from fedprompt.errors import DecryptorDisagreement, InvalidUpdate, PreconditionFailed, RobustAssumptionError
from fedprompt.protocol import Payload
from fedprompt.wire.payload import FLOAT32, decode_vector
from fedprompt.wire.threshold import ENCODING as THRESHOLD

log = structlog.get_logger("coordinator.accumulators")


@dataclass(frozen=True)
class Outcome:
    """A closed round attempt: the version to store with its summary metrics and the robust verdict, or why
    the attempt fails instead (``refusal``).  ``weight``: the total weight an encrypted aggregate must show
    when key holders check it (``coordinator.checks``)."""

    data: bytes = b""
    metrics: dict[str, float] = field(default_factory=dict)
    decision: RoundDecision | None = None
    refusal: str = ""
    weight: float = 0.0


class Fold(ABC):
    """One round attempt's updates, combined (or kept) as they arrive."""

    #: The kept ciphertexts of a round that decides on an encrypted Gram matrix; None for the others.
    gram: GramRound | None = None
    #: Each update's payload, kept (in audit mode) so the updates can be checked one by one, masked.
    kept: Mapping[str, bytes] = MappingProxyType({})
    #: A threshold job's attempt: its key-less fold, then its members' decryption shares; None for the others.
    threshold: ThresholdRound | None = None

    @abstractmethod
    def add(self, participant_id: str, payload: Payload) -> None:
        """Validate an update completely, then fold it in (``InvalidUpdate``/``InvalidCiphertext`` otherwise)."""

    def discard(self, participant_id: str) -> None:  # noqa: B027 - optional hook
        """Forget an update whose sender was expelled before the close.  A running ciphertext sum cannot give
        one back, so folds without kept updates keep it (documented in docs/operations.md)."""

    def gram_refusal(self) -> str:
        """Why the kept updates cannot go to an encrypted Gram step at the close ("" when they can)."""
        return ""

    @abstractmethod
    def close(self, postponed: str = "") -> Outcome:
        """The attempt's result.  A fold with a ``gram`` reads its decryptors' agreed Gram matrix, unless
        ``postponed`` says why there is none (too few decryptors, silent ones, or no matrix in time)."""


class Accumulator(ABC):
    """How a job's payloads are checked and combined; one per job, chosen by ``coordinator.runtime``."""

    encoding: str
    #: Encrypted jobs: key holders check every aggregate before it is stored (``coordinator.checks``).
    verifies = False
    #: Set once an aggregate failed its check: every later attempt keeps its updates, to find the culprit.
    audit = False

    @abstractmethod
    def max_bytes(self, vector_size: int) -> int:
        """The largest update payload this job accepts."""

    @abstractmethod
    def check_initial(self, payload: Payload) -> None:
        """Validate the initial prompt (version 0) before it is stored."""

    @abstractmethod
    def fold(self, number: int, attempt: int = 1) -> Fold:
        """A fold for attempt ``attempt`` of round ``number`` (which trains from version ``number - 1``)."""

    def view(self, participant_id: str, payload: Payload) -> Payload:
        """What ``participant_id`` downloads of a stored version (all of it, except for levelled jobs)."""
        return payload

    def export_refusal(self, job_id: str) -> str:
        """Why an admin cannot export a global prompt of this job ("" if it can)."""
        return ""

    def committed(self, data: bytes) -> None:  # noqa: B027 - optional hook
        """A version made of this job's aggregate ``data`` was stored (a levelled job's cohort plan follows it)."""

    def masked(self, data: bytes) -> bytes:
        """One kept update with a fresh mask on every value but its weight (``crypto.audit.mask``)."""
        raise NotImplementedError(f"{type(self).__name__} keeps nothing to mask")

    def expected_weight(self, num_examples: int) -> float:
        """The weight a kept update must show when checked: the example count its header declared."""
        return float(num_examples)


def run_aggregator(aggregator: Aggregator, start: np.ndarray,
                   contributions: list[Contribution]) -> AggregateResult | str:
    """The aggregator's result, or why the attempt must fail instead: the rule's robustness assumption does
    not hold for these updates, or the aggregate is not finite."""
    try:
        result = aggregator.aggregate(start, contributions)
    except RobustAssumptionError as exc:
        return f"{aggregator.name} refused: {exc}"
    if not np.isfinite(result.vector).all():
        return "aggregate is not finite"
    return result


class PlainFold(Fold):
    def __init__(self, aggregator: Aggregator, start: np.ndarray) -> None:
        self.aggregator = aggregator
        self.start = start
        self.contributions: dict[str, Contribution] = {}

    def add(self, participant_id: str, payload: Payload) -> None:
        vector = decode_vector(payload, self.start.size)
        self.aggregator.check(self.start, vector)
        self.contributions[participant_id] = Contribution(participant_id, payload.num_examples, vector)

    def discard(self, participant_id: str) -> None:
        self.contributions.pop(participant_id, None)

    def close(self, postponed: str = "") -> Outcome:
        """Aggregate in participant-id order, not arrival order: float sums depend on their order, and a round's
        updates arrive in whatever order the sites finish (several processes in ``simulate --engine ray``)."""
        ordered = [self.contributions[p] for p in sorted(self.contributions)]
        result = run_aggregator(self.aggregator, self.start, ordered)
        if isinstance(result, str):
            return Outcome(refusal=result)
        return Outcome(result.vector.astype("<f4").tobytes(), result.metrics, result.decision)


class PlainAccumulator(Accumulator):
    """Plaintext float32 updates, combined by the job's aggregator at the close."""

    encoding = FLOAT32

    def __init__(self, aggregator: Aggregator, job_id: str, store: Store, vector_size: Callable[[], int]) -> None:
        self.aggregator = aggregator
        self.job_id = job_id
        self.store = store
        self.vector_size = vector_size
        self._decoded: tuple[int, np.ndarray] | None = None

    def global_vector(self, version: int) -> np.ndarray:
        """Plaintext global ``version``, decoded once: every update of a round is checked against the same one
        (``Aggregator.check``), and a stored version never changes."""
        if self._decoded is None or self._decoded[0] != version:
            stored = self.store.prompt(self.job_id, version)
            if stored is None:
                raise PreconditionFailed(f"job {self.job_id} has no global version {version} yet")
            size = self.vector_size()
            self._decoded = (version, decode_vector(Payload(self.job_id, version, stored[0], size, stored[1]), size))
        return self._decoded[1]

    def max_bytes(self, vector_size: int) -> int:
        return 4 * vector_size

    def check_initial(self, payload: Payload) -> None:
        decode_vector(payload, payload.vector_size)

    def fold(self, number: int, attempt: int = 1) -> Fold:
        return PlainFold(self.aggregator, self.global_vector(number - 1))


class EncryptedFold(Fold):
    """A running ciphertext sum, the number of updates and the weight in it, and (``keep``) each update."""

    def __init__(self, total: EncryptedSum, keep: bool = False) -> None:
        self.total = total
        self.count = 0
        self.weight = 0.0
        self.keep = keep
        self.kept: dict[str, bytes] = {}

    def add(self, participant_id: str, payload: Payload) -> None:
        self.take(self.total.parse(payload.data), payload.num_examples)
        if self.keep:
            self.kept[participant_id] = payload.data

    def take(self, ciphertexts: list[seal.Ciphertext], weight: int) -> None:
        """Fold in one update's ciphertexts, parsed (and so checked) by ``self.total.parse``."""
        self.total.add(ciphertexts)
        self.count += 1
        self.weight += weight

    def close(self, postponed: str = "") -> Outcome:
        return Outcome(self.total.to_bytes(), weight=self.weight)


class EncryptedAccumulator(Accumulator):
    """CKKS updates folded on arrival into the round's running sum; the coordinator never decrypts."""

    encoding = CKKS

    def __init__(self, keys: JobKeys, vector_size: Callable[[], int]) -> None:
        self.keys = keys
        self.vector_size = vector_size

    def max_bytes(self, vector_size: int) -> int:
        return self.keys.require_context().expected_size(vector_size)

    def check_initial(self, payload: Payload) -> None:
        context = self.keys.require_context()
        context.parse(payload.data, context.key_id, payload.vector_size)

    verifies = True

    def fold(self, number: int, attempt: int = 1) -> Fold:
        return EncryptedFold(self.keys.new_sum(self.vector_size()), keep=self.audit)

    def masked(self, data: bytes) -> bytes:
        return mask(self.keys.require_context(), data, self.vector_size())

    def export_refusal(self, job_id: str) -> str:
        return (f"job {job_id} is encrypted: the coordinator holds no decrypted prompt; every key holder writes "
                "it to its state directory (prompt-latest.safetensors); export it there with `fedprompt participant "
                "export --state-dir DIR --format peft --out DIR`")


class GramFold(Fold):
    def __init__(self, gram: GramRound, defence: GramDefence, logger: structlog.typing.FilteringBoundLogger,
                 keep: bool = False) -> None:
        self.gram = gram
        self.defence = defence
        self.log = logger
        self.keep = keep
        self.kept: dict[str, bytes] = {}

    def add(self, participant_id: str, payload: Payload) -> None:
        assert self.gram is not None
        self.gram.add(participant_id, self.gram.parse(payload.data), payload.num_examples)
        if self.keep:
            self.kept[participant_id] = payload.data

    def discard(self, participant_id: str) -> None:
        assert self.gram is not None
        if not self.gram.started:
            self.gram.discard(participant_id)

    def close(self, postponed: str = "") -> Outcome:
        """Judge the agreed Gram matrix with the plaintext path's own ``GramDefence.judge``; sum the accepted
        ciphertexts.  Without a matrix both decryptors agree on, the robust decision fails closed."""
        kept = self.gram
        assert kept is not None
        if postponed:
            return Outcome(refusal=postponed)
        try:
            gram = kept.agreed()
        except DecryptorDisagreement as exc:
            self.log.warning("robust decision refused: Gram decryptors disagree", decryptors=list(kept.decryptors),
                             reason=str(exc))
            return Outcome(refusal=f"robust decision refused: {exc}")
        try:
            verdict, metrics = self.defence.judge(kept.order, gram)
        except RobustAssumptionError as exc:
            return Outcome(refusal=f"{self.defence.name} refused: {exc}")
        return Outcome(kept.fold(verdict.accepted), {**metrics, "gram_seconds": kept.gram_seconds}, verdict,
                       weight=float(sum(kept.weights[p] for p in verdict.accepted)))


class GramAccumulator(EncryptedAccumulator):
    """CKKS updates kept whole, so the round can decide on their encrypted Gram matrix before summing."""

    def __init__(self, keys: JobKeys, vector_size: Callable[[], int], defence: GramDefence) -> None:
        super().__init__(keys, vector_size)
        self.defence = defence

    def fold(self, number: int, attempt: int = 1) -> Fold:
        return GramFold(self.keys.new_gram_round(self.vector_size()), self.defence,
                        log.bind(job_id=self.keys.job_id, round=number), keep=self.audit)

    def expected_weight(self, num_examples: int) -> float:
        return 0.0  # members encrypt 0 in the weight slot; the coordinator adds the accepted weights


class ThresholdFold(Fold):
    """One threshold attempt: seeded uploads folded key-less, then (``threshold.decryption``) t masked shares.
    Each upload's declared weight is its example count in the job's weight unit (``weigh``:
    ``JobConfig.summand_weight``, as the site encrypted it), so the members' check of the weight slot agrees."""

    def __init__(self, machine: ThresholdRound, weigh: Callable[[int], float]) -> None:
        self.threshold = machine
        self.weigh = weigh

    def add(self, participant_id: str, payload: Payload) -> None:
        assert self.threshold is not None
        self.threshold.add(participant_id, self.threshold.attempt, payload.data, self.weigh(payload.num_examples))

    def close(self, postponed: str = "") -> Outcome:
        """The stored version once every decryptor answered; ``postponed``: the deadline passed without them
        (they are asked last in the next attempt, and those that answered only for the same uploaders)."""
        machine = self.threshold
        decryption = machine.decryption if machine is not None else None
        if machine is None or decryption is None:
            return Outcome(refusal=postponed or "the aggregate was never sent for decryption")
        if postponed:
            machine.memory.note(decryption)
            return Outcome(refusal=postponed)
        return Outcome(decryption.version(), weight=decryption.declared_weight)


class ThresholdAccumulator(Accumulator):
    """Seeded threshold-CKKS uploads (``coordinator.threshold``): no key anywhere at the coordinator."""

    encoding = THRESHOLD

    def __init__(self, keys: ThresholdKeyRelay, vector_size: Callable[[], int], weigh: Callable[[int], float]) -> None:
        """``weigh``: an update's declared weight from its example count (``JobConfig.summand_weight``)."""
        self.keys = keys  # its relay is replaced when a restarted coordinator restores it
        self.vector_size = vector_size
        self.weigh = weigh
        self.memory = RoundMemory()  # the current round's, across its attempts

    def max_bytes(self, vector_size: int) -> int:
        return max(self.keys.require_context().expected_size(vector_size), 4 * vector_size + 1024)

    def check_initial(self, payload: Payload) -> None:
        """Sealed under the members' group key, which the coordinator lacks: only its size is checked."""
        if not 4 * payload.vector_size < len(payload.data) <= 4 * payload.vector_size + 1024:
            raise InvalidUpdate(f"a threshold job's initial prompt is {payload.vector_size} float32 values sealed "
                                f"for the members, not {len(payload.data)} bytes")

    def fold(self, number: int, attempt: int = 1) -> Fold:
        return ThresholdFold(ThresholdRound(self.keys.relay, number, self.vector_size(), attempt, self.memory),
                             self.weigh)

    def committed(self, data: bytes) -> None:
        self.memory = RoundMemory()

    def export_refusal(self, job_id: str) -> str:
        return (f"job {job_id} uses threshold keys: the coordinator holds no decrypted prompt; every member writes "
                "it to its state directory (prompt-latest.safetensors)")
