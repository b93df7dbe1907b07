"""One job's prompt levels at the coordinator (PLMM; formats in ``fedprompt.wire.levels``).

Each update is a level container with a global part and (with an expert level) an expert part; the
personal level never arrives.  Each level has its own aggregation:

* **global**: the job's aggregator (FedAvg or a robust rule) over every update of the round;
* **expert**: FedAvg within each cohort (``coordinator.cohorts``), over the updates the global decision
  accepted, so a rejected participant's expert part is dropped too.  A cohort without updates keeps its
  expert prompt.

Encrypted jobs take the same secure path per level: each part is validated under the job's public context
and folded on arrival into the round's running sum for its level (one global sum, one per cohort), exactly
as a whole prompt is without levels.  A cohort's encrypted sum is published only when at least
``MIN_HE_COHORT`` (2) updates went into it; otherwise the cohort keeps its expert prompt for that round, so
no key holder can decrypt an individual update.  Missing expert parts of an encrypted version mean
"unchanged".

Plaintext versions store every cohort's absolute expert prompt; every version of a job that discovers its
cohorts stores the cohort assignment (``cohorts`` part, plaintext JSON, also in encrypted jobs), so a
coordinator restart recovers a discovered assignment from the newest version.  With ``cohorts_from =
"discover"`` the assignment is made when round ``levels.discover_round`` aggregates: that round's updates
are clustered from their Gram matrix (``coordinator.cohorts.discover_cohorts``); every new cohort starts
from the expert prompt everyone shared until then; members not in that round stay in the default cohort.

Encrypted jobs discover on the encrypted Gram matrix of the whole exchanged updates (global and expert
parts: the same ``G`` as the plaintext path, so both paths cluster alike): the discovery round keeps each
update's ciphertexts in a ``coordinator.hegram.GramRound`` besides folding them, and the round machine
(``coordinator.rounds``) has two key holders decrypt its Gram scalars before this module aggregates.  Each
level part carries ``n_u`` in its weight slot, so entry ``(u, v)`` divided by ``n_u n_v`` is
``<d_u, d_v>`` plus one per part, which is subtracted.  If the Gram matrix cannot be had or trusted
(decryptors disagree or stay silent, fewer than two online) discovery is postponed to the next round and
the round aggregates as before: never a wrong assignment.  A discovered cohort of one member never
publishes an expert sum (``MIN_HE_COHORT``), so its expert prompt stays as discovery left it.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field

import numpy as np
import structlog

from fedprompt.config import MIN_HE_COHORT, JobConfig
from fedprompt.coordinator.aggregation import AggregateResult, Aggregator, Contribution, weighted_mean
from fedprompt.coordinator.cohorts import DEFAULT_COHORT, CohortPlan
from fedprompt.coordinator.keys import JobKeys
from fedprompt.coordinator.robust import gram
from fedprompt.coordinator.store import Store
from fedprompt.crypto.ckks import ENCODING as CKKS
from fedprompt.crypto.ckks import EncryptedSum
from fedprompt.errors import InvalidUpdate, PreconditionFailed, RobustAssumptionError
from fedprompt.protocol import Payload
from fedprompt.wire.levels import (
    COHORTS_PART,
    EXPERT,
    GLOBAL,
    encoding,
    expert_key,
    pack,
    shared_levels,
    shared_parts,
    unpack,
)
from fedprompt.wire.payload import FLOAT32, decode_vector, encode_vector

if typing.TYPE_CHECKING:
    from fedprompt.coordinator.rounds import OpenRound

log = structlog.get_logger("coordinator.levels")

#: Framing slack of a level container (magic, part count, names and sizes) over its parts' bytes.
CONTAINER_SLACK = 1024
_EMPTY = np.empty(0, dtype=np.float32)


@dataclass(frozen=True)
class LevelOutcome:
    """A levelled round's result: the version to store, its summary metrics, the global level's aggregate
    (plaintext only, for the robust decision record), or why the round must be retried."""

    data: bytes = b""
    metrics: dict[str, float] = field(default_factory=dict)
    result: AggregateResult | None = None
    refusal: str = ""


def check_levels(config: JobConfig) -> None:
    """Job-creation checks the config sections cannot make alone (they are also parsed by participants,
    who never see the cohorts)."""
    CohortPlan.check(config.levels)


class JobLevels:
    """Splits, folds, aggregates and serves the shared levels of one job."""

    def __init__(self, job_id: str, config: JobConfig, store: Store, keys: JobKeys | None) -> None:
        self.job_id = job_id
        self.levels = config.levels
        self.names = shared_levels(config.levels.expert_tokens)
        self.plan = CohortPlan(config.levels)
        self.store = store
        self.keys = keys
        self.encoding = encoding(CKKS if keys is not None else FLOAT32)
        self._sizes: dict[str, int] | None = None
        self._round: tuple[int, int] | None = None
        self._sums: dict[str, EncryptedSum] = {}
        self._counts: dict[str, int] = {}
        self.log = log.bind(job_id=job_id)
        latest = store.latest_version(job_id)
        stored = store.prompt(job_id, latest) if latest is not None else None
        if stored is not None and self.plan.discovers and COHORTS_PART in (parts := unpack(stored[1])):
            self.plan.load_json(parts[COHORTS_PART][1])

    # ---- sizes and limits -------------------------------------------------------------------------
    def sizes(self) -> dict[str, int]:
        """Each shared level's size, fixed by the initial prompt (read back from it after a restart)."""
        if self._sizes is None:
            stored = self.store.prompt(self.job_id, 0)
            if stored is None:
                raise PreconditionFailed(f"job {self.job_id} has no initial prompt yet")
            self._sizes = {name: size for name, (size, _) in unpack(stored[1]).items()}
        return self._sizes

    def needs_gram(self, number: int) -> bool:
        """Whether round ``number`` of an encrypted job discovers cohorts (on an encrypted Gram matrix)."""
        return (self.keys is not None and self.plan.discovers and number >= self.levels.discover_round
                and not self.plan.assigned)

    def max_bytes(self, vector_size: int) -> int:
        """An upper bound on an update's container: one float32 vector, or one encryption per level (splitting
        a vector into levels costs at most one extra ciphertext per extra level)."""
        if self.keys is None:
            return 4 * vector_size + CONTAINER_SLACK
        context = self.keys.require_context()
        return context.expected_size(vector_size) + (len(self.names) - 1) * context.expected_size(0) + CONTAINER_SLACK

    # ---- uploads ----------------------------------------------------------------------------------
    def accept(self, participant_id: str, payload: Payload, r: OpenRound | None) -> np.ndarray:
        """Validate an update (or the initial prompt) level by level; fold encrypted levels into the round's
        sums.  Returns the plaintext vector (all shared levels) or, for encrypted jobs, an empty one."""
        initial = payload.round == 0
        parts = shared_parts(payload.data, self.names, None if initial else self.sizes())
        if initial and (any(size < 1 for size, _ in parts.values())
                        or sum(size for size, _ in parts.values()) != payload.vector_size):
            raise InvalidUpdate(f"level sizes {[size for size, _ in parts.values()]} do not add up to the "
                                f"{payload.vector_size} parameters declared")
        if self.keys is None:
            vector = np.concatenate([decode_vector(Payload(self.job_id, payload.round, FLOAT32, size, data), size)
                                     for size, data in parts.values()])
            if initial:
                self._sizes = {name: size for name, (size, _) in parts.items()}
            return vector
        context = self.keys.require_context()
        if initial:
            for size, data in parts.values():
                context.parse(data, context.key_id, size)
            self._sizes = {name: size for name, (size, _) in parts.items()}
            return _EMPTY
        assert r is not None  # the round machine checked the header: an update has an open round
        if self._round != (r.number, r.attempt):
            self._round, self._sums, self._counts = (r.number, r.attempt), {}, {}
        parsed = []
        for name, (size, data) in parts.items():  # parse every level before folding any
            target = GLOBAL if name == GLOBAL else expert_key(self.plan.cohort_of(participant_id))
            total = self._sums.get(target) or context.new_sum(size)
            parsed.append((target, total, total.parse(data)))
        # the discovery round keeps a second parse for its Gram matrix: a sum folds into its first term in place
        kept = [ct for size, data in parts.values() for ct in context.parse(data, context.key_id, size)] \
            if r.gram is not None else []
        for target, total, ciphertexts in parsed:
            total.add(ciphertexts)
            self._sums[target] = total
            self._counts[target] = self._counts.get(target, 0) + 1
        if r.gram is not None:
            r.gram.add(participant_id, kept, payload.num_examples)
        return _EMPTY

    # ---- aggregation ------------------------------------------------------------------------------
    def aggregate(self, r: OpenRound, aggregator: Aggregator, gram: np.ndarray | None = None,
                  postponed: str = "") -> LevelOutcome:
        """The new global version of round ``r`` as a stored container.

        An encrypted discovery round (``r.gram``) passes the agreed Gram matrix ``gram`` of ``r.gram.order``
        (weighted deltas over ``n_u n_v``), or why it has none (``postponed``).
        """
        if self.keys is not None:
            return self._aggregate_encrypted(r, gram, postponed)
        return self._aggregate_plain(r, aggregator)

    def _aggregate_encrypted(self, r: OpenRound, gram: np.ndarray | None, postponed: str) -> LevelOutcome:
        if self._round != (r.number, r.attempt) or GLOBAL not in self._sums:
            return LevelOutcome(refusal="no encrypted update was folded in this attempt")
        found: dict[str, str] = {}
        metrics: dict[str, float] = {}
        if r.gram is not None and gram is not None:
            # every level part has n_u in its weight slot: one n_u n_v per part in entry (u, v)
            found = self._discover(r, list(r.gram.order), gram - len(self.names))
            if found:
                metrics["cohorts_discovered"] = float(len(set(found.values())))
        elif r.gram is not None:
            self._postpone(r, postponed)
        if r.gram is not None and r.gram.started:
            metrics["gram_seconds"] = r.gram.gram_seconds
        sizes = self.sizes()
        parts = {GLOBAL: (sizes[GLOBAL], self._sums[GLOBAL].to_bytes())}
        withheld = []
        for target in sorted(t for t in self._sums if t != GLOBAL):
            if self._counts[target] < MIN_HE_COHORT:
                withheld.append(target)
                continue
            parts[target] = (sizes[EXPERT], self._sums[target].to_bytes())
        if withheld:
            self.log.warning("expert sums withheld: too few updates to hide an individual one", round=r.number,
                             cohorts=[t.split(":", 1)[1] for t in withheld], minimum=MIN_HE_COHORT)
        self._round, self._sums, self._counts = None, {}, {}
        metrics.update(expert_cohorts_updated=float(len(parts) - 1), expert_cohorts_withheld=float(len(withheld)))
        for cohort in sorted(set(found.values())):  # this round's shared expert sum (>= num_cohorts updates)
            parts[expert_key(cohort)] = parts[expert_key(DEFAULT_COHORT)]
        if self.plan.discovers:
            parts[COHORTS_PART] = (0, self.plan.to_json())
        return LevelOutcome(pack(parts), metrics)

    def _aggregate_plain(self, r: OpenRound, aggregator: Aggregator) -> LevelOutcome:
        stored = self.store.prompt(self.job_id, r.number - 1)
        assert stored is not None  # a round opens only once the previous version exists
        previous = unpack(stored[1])
        sizes = self.sizes()
        split = sizes[GLOBAL]
        contributions = list(r.contributions.values())
        try:
            result = aggregator.aggregate(self._vector(previous[GLOBAL]), [
                Contribution(c.participant_id, c.num_examples, c.delta[:split]) for c in contributions])
        except RobustAssumptionError as exc:
            return LevelOutcome(refusal=f"{aggregator.name} refused: {exc}")
        if not np.isfinite(result.vector).all():
            return LevelOutcome(refusal="aggregate is not finite")
        parts = {GLOBAL: (split, encode_vector(result.vector))}
        metrics = dict(result.metrics)
        if EXPERT in sizes:
            experts = {cohort: self._vector(self._resolve(previous, cohort)) for cohort in self._cohorts(previous)}
            accepted = set(result.accepted)
            by_cohort: dict[str, list[Contribution]] = {}
            for c in contributions:
                if c.participant_id in accepted:
                    by_cohort.setdefault(self.plan.cohort_of(c.participant_id), []).append(c)
            for cohort, members in by_cohort.items():
                mean = weighted_mean([c.delta[split:] for c in members], [c.num_examples for c in members])
                experts[cohort] = (experts[cohort].astype(np.float64) + mean).astype(np.float32)
            metrics["expert_cohorts_updated"] = float(len(by_cohort))
            if self.plan.discovers and r.number >= self.levels.discover_round and not self.plan.assigned:
                found = self._discover(r, [c.participant_id for c in contributions],
                                       gram(np.stack([c.delta for c in contributions])))
                for cohort in set(found.values()):  # each new cohort starts from the shared expert prompt
                    experts[cohort] = experts[DEFAULT_COHORT].copy()
                if found:
                    metrics["cohorts_discovered"] = float(len(set(found.values())))
            parts.update({expert_key(c): (sizes[EXPERT], encode_vector(v)) for c, v in sorted(experts.items())})
            parts[COHORTS_PART] = (0, self.plan.to_json())
        return LevelOutcome(pack(parts), metrics, result)

    def _discover(self, r: OpenRound, ids: list[str], g: np.ndarray) -> dict[str, str]:
        """Cluster this round's updates (rows of their Gram matrix ``g``) into cohorts; {} if postponed."""
        why = self.plan.too_few(len(ids))
        if why:
            self._postpone(r, why)
            return {}
        found = self.plan.discover(ids, g)
        self.log.info("cohorts discovered", round=r.number, cohorts={c: sorted(p for p in found if found[p] == c)
                                                                     for c in sorted(set(found.values()))})
        return found

    def _postpone(self, r: OpenRound, why: str) -> None:
        self.log.warning("cohort discovery postponed", round=r.number, reason=why)

    def _cohorts(self, parts: dict[str, tuple[int, bytes]]) -> list[str]:
        stored = [name.split(":", 1)[1] for name in parts if name.startswith(EXPERT + ":")]
        return sorted({*self.plan.names(), *stored})

    def _resolve(self, parts: dict[str, tuple[int, bytes]], cohort: str) -> tuple[int, bytes]:
        """A cohort's expert part of a stored version.  Plaintext versions fall back to the default cohort
        (a cohort discovered later shared it then) and to the initial prompt; an encrypted version without
        the cohort's sum means "unchanged" (an empty part) after version 0."""
        if expert_key(cohort) in parts:
            return parts[expert_key(cohort)]
        if EXPERT in parts:
            return parts[EXPERT]
        if self.keys is None:
            return parts[expert_key(DEFAULT_COHORT)]
        return self.sizes()[EXPERT], b""

    def _vector(self, part: tuple[int, bytes]) -> np.ndarray:
        size, data = part
        return decode_vector(Payload(self.job_id, 0, FLOAT32, size, data), size)

    # ---- downloads --------------------------------------------------------------------------------
    def view(self, participant_id: str, payload: Payload) -> Payload:
        """What a member downloads of a stored version: the global part and its own cohort's expert part."""
        parts = unpack(payload.data)
        out = {GLOBAL: parts[GLOBAL]}
        if EXPERT in self.names:
            out[EXPERT] = self._resolve(parts, self.plan.cohort_of(participant_id))
        return Payload(payload.job_id, payload.round, payload.encoding, payload.vector_size, pack(out))
