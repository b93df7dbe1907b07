"""One job's prompt levels at the coordinator (PLMM; formats in ``fedprompt.wire.levels``): the levelled
accumulator, which splits every update into its levels and combines each level on its own.

Each update is a level container with a global part and (with an expert level) an expert part; the
personal level never arrives.  Each level has its own aggregation:

* **global**: the job's aggregator (FedAvg or a robust rule) over every update of the round;
* **expert**: FedAvg within each cohort (``coordinator.cohorts``), over the updates the global decision
  accepted, so a rejected participant's expert part is dropped too.  A cohort without updates keeps its
  expert prompt.

Encrypted jobs take the same secure path per level: each part is validated under the job's public context
and folded on arrival into a running sum for its level (one ``EncryptedFold`` for the global level, one per
cohort), exactly as a whole prompt is without levels.  A cohort's encrypted sum is published only when at
least ``MIN_HE_COHORT`` (2) updates went into it; otherwise the cohort keeps its expert prompt for that
round, so no key holder can decrypt an individual update.  Missing expert parts of an encrypted version
mean "unchanged".

Plaintext versions store every cohort's absolute expert prompt; every version of a job that discovers its
cohorts stores the cohort assignment (``cohorts`` part, plaintext JSON, also in encrypted jobs), so a
coordinator restart recovers a discovered assignment from the newest version.  With ``cohorts_from =
"discover"`` the assignment is made when round ``levels.discover_round`` aggregates: that round's updates
are clustered from their Gram matrix (``coordinator.cohorts.discover_cohorts``); every new cohort starts
from the expert prompt everyone shared until then; members not in that round stay in the default cohort.

Encrypted jobs discover on the encrypted Gram matrix of the whole exchanged updates (global and expert
parts: the same ``G`` as the plaintext path, so both paths cluster alike): the discovery round's fold keeps
each update's ciphertexts in a ``coordinator.hegram.GramRound`` besides folding them, and the round decides
on its Gram matrix (two key holders decrypt the scalars, ``coordinator.runtime``) before the fold closes.
Each level part carries ``n_u`` in its weight slot, so entry ``(u, v)`` divided by ``n_u n_v`` is
``<d_u, d_v>`` plus one per part, which is subtracted.  If the Gram matrix cannot be had or trusted
(decryptors disagree or stay silent, fewer than two online) discovery is postponed to the next round and
the round aggregates as before: never a wrong assignment.  A discovered cohort of one member never
publishes an expert sum (``MIN_HE_COHORT``), so its expert prompt stays as discovery left it.
"""

from __future__ import annotations

import numpy as np
import structlog
import tenseal.sealapi as seal

from fedprompt.config import MIN_HE_COHORT, JobConfig
from fedprompt.coordinator.accumulators import Accumulator, EncryptedFold, Fold, Outcome, run_aggregator
from fedprompt.coordinator.aggregation import Aggregator, Contribution, weighted_mean
from fedprompt.coordinator.cohorts import DEFAULT_COHORT, CohortPlan
from fedprompt.coordinator.hegram import GramRound
from fedprompt.coordinator.keys import JobKeys
from fedprompt.coordinator.robust import gram
from fedprompt.coordinator.store import Store
from fedprompt.crypto.audit import mask
from fedprompt.crypto.ckks import ENCODING as CKKS
from fedprompt.errors import DecryptorDisagreement, InvalidUpdate, PreconditionFailed
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

log = structlog.get_logger("coordinator.levels")

#: Framing slack of a level container (magic, part count, names and sizes) over its parts' bytes.
CONTAINER_SLACK = 1024

Parts = dict[str, tuple[int, bytes]]


class LevelledAccumulator(Accumulator):
    """Splits, checks and combines the shared levels of one job's updates, and serves each member its view."""

    def __init__(self, job_id: str, config: JobConfig, store: Store, keys: JobKeys | None,
                 aggregator: Aggregator) -> None:
        self.job_id = job_id
        self.levels = config.levels
        self.names = shared_levels(config.levels.expert_tokens)
        self.plan = CohortPlan(config.levels)
        self.store = store
        self.keys = keys
        self.aggregator = aggregator
        self.encoding = encoding(CKKS if keys is not None else FLOAT32)
        self.verifies = keys is not None
        self._sizes: dict[str, int] | None = None
        self.log = log.bind(job_id=job_id)
        latest = store.latest_version(job_id)
        stored = store.prompt(job_id, latest) if latest is not None else None
        if stored is not None:
            self.committed(stored[1])

    def committed(self, data: bytes) -> None:
        """A version was stored: the cohort assignment it carries is the plan from now on."""
        if self.plan.discovers and COHORTS_PART in (parts := unpack(data)):
            self.plan.load_json(parts[COHORTS_PART][1])

    def sizes(self) -> dict[str, int]:
        """Each shared level's size, fixed by the initial prompt (read back from it after a restart)."""
        if self._sizes is None:
            self._sizes = {name: size for name, (size, _) in unpack(self.stored(0)).items()}
        return self._sizes

    def stored(self, version: int) -> bytes:
        found = self.store.prompt(self.job_id, version)
        if found is None:
            raise PreconditionFailed(f"job {self.job_id} has no global version {version} yet")
        return found[1]

    def discovers_in(self, number: int) -> bool:
        """Whether round ``number`` discovers the cohorts (the first round from ``levels.discover_round`` on)."""
        return self.plan.discovers and number >= self.levels.discover_round and not self.plan.assigned

    def max_bytes(self, vector_size: int) -> int:
        """One float32 vector, or one encryption per level (splitting a vector into levels costs at most one
        extra ciphertext per extra level), plus the container's framing."""
        if self.keys is None:
            return 4 * vector_size + CONTAINER_SLACK
        context = self.keys.require_context()
        return context.expected_size(vector_size) + (len(self.names) - 1) * context.expected_size(0) + CONTAINER_SLACK

    def check_initial(self, payload: Payload) -> None:
        parts = shared_parts(payload.data, self.names)
        if any(size < 1 for size, _ in parts.values()) or sum(size for size, _ in parts.values()) != payload.vector_size:
            raise InvalidUpdate(f"level sizes {[size for size, _ in parts.values()]} do not add up to the "
                                f"{payload.vector_size} parameters declared")
        for size, data in parts.values():
            if self.keys is None:
                decode_vector(Payload(self.job_id, 0, FLOAT32, size, data), size)
            else:
                context = self.keys.require_context()
                context.parse(data, context.key_id, size)
        self._sizes = {name: size for name, (size, _) in parts.items()}

    def fold(self, number: int, attempt: int = 1) -> Fold:
        if self.keys is None:
            return PlainLevelsFold(self, number)
        kept = self.keys.new_gram_round(sum(self.sizes().values())) if self.discovers_in(number) else None
        return EncryptedLevelsFold(self, number, kept, keep=self.audit)

    def masked(self, data: bytes) -> bytes:
        """A kept update container with each level part masked on its own (its weight slot kept)."""
        assert self.keys is not None
        context = self.keys.require_context()
        return pack({name: (size, mask(context, part, size))
                     for name, (size, part) in shared_parts(data, self.names, self.sizes()).items()})

    def view(self, participant_id: str, payload: Payload) -> Payload:
        """What a member downloads of a stored version: the global part and its own cohort's expert part."""
        parts = unpack(payload.data)
        out = {GLOBAL: parts[GLOBAL]}
        if EXPERT in self.names:
            out[EXPERT] = self.resolve(parts, self.plan.cohort_of(participant_id))
        return Payload(payload.job_id, payload.round, payload.encoding, payload.vector_size, pack(out))

    def export_refusal(self, job_id: str) -> str:
        return (f"job {job_id} uses prompt levels: there is no single prompt to export (each member's adds its "
                "cohort's expert level and its own personal level)")

    def resolve(self, parts: Parts, cohort: str) -> tuple[int, bytes]:
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

    def cohorts(self, parts: Parts) -> list[str]:
        stored = [name.split(":", 1)[1] for name in parts if name.startswith(EXPERT + ":")]
        return sorted({*self.plan.names(), *stored})

    def discover(self, number: int, ids: list[str], g: np.ndarray) -> dict[str, str]:
        """Cluster a round's updates (rows of their Gram matrix ``g``) into cohorts; {} if postponed."""
        why = self.plan.too_few(len(ids))
        if why:
            self.postpone(number, why)
            return {}
        found = self.plan.discover(ids, g)
        self.log.info("cohorts discovered", round=number, cohorts={c: sorted(p for p in found if found[p] == c)
                                                                   for c in sorted(set(found.values()))})
        return found

    def postpone(self, number: int, why: str) -> None:
        self.log.warning("cohort discovery postponed", round=number, reason=why)


def _vector(part: tuple[int, bytes]) -> np.ndarray:
    size, data = part
    return decode_vector(Payload("", 0, FLOAT32, size, data), size)


class PlainLevelsFold(Fold):
    """Plaintext levelled updates, kept until the close: the global level goes through the job's aggregator,
    each cohort's expert level is averaged over its accepted members."""

    def __init__(self, levels: LevelledAccumulator, number: int) -> None:
        self.levels = levels
        self.number = number
        self.contributions: dict[str, Contribution] = {}

    def add(self, participant_id: str, payload: Payload) -> None:
        parts = shared_parts(payload.data, self.levels.names, self.levels.sizes())
        vector = np.concatenate([_vector(part) for part in parts.values()])
        self.contributions[participant_id] = Contribution(participant_id, payload.num_examples, vector)

    def discard(self, participant_id: str) -> None:
        self.contributions.pop(participant_id, None)

    def close(self, postponed: str = "") -> Outcome:
        levels = self.levels
        aggregator = levels.aggregator
        previous = unpack(levels.stored(self.number - 1))
        sizes = levels.sizes()
        split = sizes[GLOBAL]
        contributions = list(self.contributions.values())
        result = run_aggregator(aggregator, _vector(previous[GLOBAL]), [
            Contribution(c.participant_id, c.num_examples, c.delta[:split]) for c in contributions])
        if isinstance(result, str):
            return Outcome(refusal=result)
        parts = {GLOBAL: (split, encode_vector(result.vector))}
        metrics = dict(result.metrics)
        if EXPERT in sizes:
            experts = {cohort: _vector(levels.resolve(previous, cohort)) for cohort in levels.cohorts(previous)}
            accepted = set(result.accepted)
            by_cohort: dict[str, list[Contribution]] = {}
            for c in contributions:
                if c.participant_id in accepted:
                    by_cohort.setdefault(levels.plan.cohort_of(c.participant_id), []).append(c)
            for cohort, members in by_cohort.items():
                mean = weighted_mean([c.delta[split:] for c in members], [c.num_examples for c in members])
                experts[cohort] = (experts[cohort].astype(np.float64) + mean).astype(np.float32)
            metrics["expert_cohorts_updated"] = float(len(by_cohort))
            found: dict[str, str] = {}
            if levels.discovers_in(self.number):
                found = levels.discover(self.number, [c.participant_id for c in contributions],
                                        gram(np.stack([c.delta for c in contributions])))
                for cohort in set(found.values()):  # each new cohort starts from the shared expert prompt
                    experts[cohort] = experts[DEFAULT_COHORT].copy()
                if found:
                    metrics["cohorts_discovered"] = float(len(set(found.values())))
            parts.update({expert_key(c): (sizes[EXPERT], encode_vector(v)) for c, v in sorted(experts.items())})
            parts[COHORTS_PART] = (0, levels.plan.to_json(found))
        return Outcome(pack(parts), metrics, result.decision)


class EncryptedLevelsFold(Fold):
    """Encrypted levelled updates folded per level target on arrival (``global``, ``expert:<cohort>``); the
    discovery round also keeps each update's ciphertexts for its encrypted Gram matrix."""

    def __init__(self, levels: LevelledAccumulator, number: int, kept: GramRound | None, keep: bool = False) -> None:
        self.levels = levels
        self.number = number
        self.gram = kept
        self.keep = keep
        self.kept: dict[str, bytes] = {}
        self.sums: dict[str, EncryptedFold] = {}

    def add(self, participant_id: str, payload: Payload) -> None:
        levels = self.levels
        assert levels.keys is not None
        context = levels.keys.require_context()
        parts = shared_parts(payload.data, levels.names, levels.sizes())
        parsed: list[tuple[str, EncryptedFold, list[seal.Ciphertext]]] = []
        for name, (size, data) in parts.items():  # parse every level before folding any
            target = GLOBAL if name == GLOBAL else expert_key(levels.plan.cohort_of(participant_id))
            fold = self.sums.get(target) or EncryptedFold(context.new_sum(size))
            parsed.append((target, fold, fold.total.parse(data)))
        # the discovery round keeps a second parse for its Gram matrix: a sum folds into its first term in place
        kept = [ct for size, data in parts.values() for ct in context.parse(data, context.key_id, size)] \
            if self.gram is not None else []
        for target, fold, ciphertexts in parsed:
            fold.take(ciphertexts, payload.num_examples)
            self.sums[target] = fold
        if self.gram is not None:
            self.gram.add(participant_id, kept, payload.num_examples)
        if self.keep:
            self.kept[participant_id] = payload.data

    def discard(self, participant_id: str) -> None:
        if self.gram is not None and not self.gram.started:
            self.gram.discard(participant_id)

    def gram_refusal(self) -> str:
        return self.levels.plan.too_few(len(self.gram.updates)) if self.gram is not None else ""

    def close(self, postponed: str = "") -> Outcome:
        levels = self.levels
        if GLOBAL not in self.sums:
            return Outcome(refusal="no encrypted update was folded in this attempt")
        found: dict[str, str] = {}
        metrics: dict[str, float] = {}
        if self.gram is not None:
            found = self._discover(self.gram, postponed)
            if found:
                metrics["cohorts_discovered"] = float(len(set(found.values())))
            if self.gram.started:
                metrics["gram_seconds"] = self.gram.gram_seconds
        sizes = levels.sizes()
        parts = {GLOBAL: (sizes[GLOBAL], self.sums[GLOBAL].total.to_bytes())}
        withheld = []
        for target in sorted(t for t in self.sums if t != GLOBAL):
            if self.sums[target].count < MIN_HE_COHORT:
                withheld.append(target)
                continue
            parts[target] = (sizes[EXPERT], self.sums[target].total.to_bytes())
        if withheld:
            levels.log.warning("expert sums withheld: too few updates to hide an individual one", round=self.number,
                               cohorts=[t.split(":", 1)[1] for t in withheld], minimum=MIN_HE_COHORT)
        metrics.update(expert_cohorts_updated=float(len(parts) - 1), expert_cohorts_withheld=float(len(withheld)))
        for cohort in sorted(set(found.values())):  # this round's shared expert sum (>= num_cohorts updates)
            parts[expert_key(cohort)] = parts[expert_key(DEFAULT_COHORT)]
        if levels.plan.discovers:
            parts[COHORTS_PART] = (0, levels.plan.to_json(found))
        return Outcome(pack(parts), metrics, weight=self.sums[GLOBAL].weight)

    def _discover(self, kept: GramRound, postponed: str) -> dict[str, str]:
        """Cohorts from the decryptors' agreed Gram matrix, or {} with the reason logged (postponed)."""
        if postponed:
            self.levels.postpone(self.number, postponed)
            return {}
        try:
            g = kept.agreed()
        except DecryptorDisagreement as exc:
            self.levels.postpone(self.number, str(exc))
            return {}
        # every level part has n_u in its weight slot: one n_u n_v per part in entry (u, v)
        return self.levels.discover(self.number, list(kept.order), g - len(self.levels.names))
