"""The upload gate of one job: every payload a member sends is checked here once, by its header, before any
chunk is read, and again only for what may have changed while its chunks arrived.

What a member may upload: the initial prompt (version 0, only the member chosen to provide it, once), the
dealer's evaluation keys (encrypted jobs whose coordinator computes a Gram matrix), or its update for the
open round (only if selected, once per attempt, while the attempt trains and before its deadline, with an
example count within what it declared at join).  The header names the job, the encoding and vector size
this job uses, and the size and SHA-256 of the payload; ``fedprompt.wire.payload.ChunkAssembler`` holds the
chunks to that size and digest.  A retry of an update that already counts (same digest, its answer lost)
is recognised and acknowledged without being taken twice.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

from fedprompt.coordinator.accumulators import Accumulator
from fedprompt.coordinator.keys import JobKeys
from fedprompt.coordinator.roster import Roster
from fedprompt.coordinator.rounds import RoundMachine, RoundState
from fedprompt.coordinator.store import Store
from fedprompt.crypto.gram import EVALUATION_KEYS
from fedprompt.errors import (
    DuplicateUpdate,
    InvalidRequest,
    InvalidUpdate,
    NotFound,
    NotSelected,
    PreconditionFailed,
    StaleRound,
    quoted,
)
from fedprompt.protocol import PayloadHeader

MAX_VECTOR_SIZE = 16 * 1024 * 1024


class UploadKind(enum.Enum):
    INITIAL = "initial"
    UPDATE = "update"
    EVALUATION_KEYS = "evaluation_keys"


@dataclass(frozen=True)
class Admission:
    """An upload whose header passed the gate: what it is, for which attempt, and its byte limit."""

    participant_id: str
    header: PayloadHeader
    kind: UploadKind
    max_bytes: int
    attempt: int = 0


class UploadGate:
    """Checks one job's uploads against its members, its open round and its encoding."""

    def __init__(self, job_id: str, roster: Roster, rounds: RoundMachine, accumulator: Accumulator,
                 keys: JobKeys | None, store: Store) -> None:
        self.job_id = job_id
        self.roster = roster
        self.rounds = rounds
        self.accumulator = accumulator
        self.keys = keys
        self.store = store
        self.vector_size = 0  # the exchanged vector's length, fixed by the first member to join

    def agree_size(self, vector_size: int) -> None:
        """A joining member's vector size: the first fixes the job's, every later one must match it."""
        if not 1 <= vector_size <= MAX_VECTOR_SIZE:
            raise InvalidRequest(f"vector_size must be in [1, {MAX_VECTOR_SIZE}]")
        if self.vector_size == 0:
            self.vector_size = vector_size
            self.store.set_vector_size(self.job_id, vector_size)
        elif vector_size != self.vector_size:
            raise InvalidUpdate(f"your model yields {vector_size} prompt parameters, this job uses {self.vector_size}; "
                                "check the model and prompt length")

    def admit(self, participant_id: str, header: PayloadHeader) -> Admission:
        """Check an upload's header before any chunk is read."""
        self.roster.touch(participant_id, self.rounds.clock())
        if header.job_id != self.job_id:
            raise NotFound(f"header names job {quoted(header.job_id)}, the stream is for {self.job_id}")
        if header.encoding == EVALUATION_KEYS:
            if self.keys is None:
                raise PreconditionFailed(f"job {self.job_id} is not encrypted (he.enabled is false)")
            return Admission(participant_id, header, UploadKind.EVALUATION_KEYS,
                             self.keys.check_evaluation_keys(participant_id))
        if header.encoding != self.accumulator.encoding:
            raise InvalidUpdate(f"encoding {quoted(header.encoding)} is not accepted by this job (expects "
                                f"{self.accumulator.encoding!r})")
        if header.vector_size != self.vector_size:
            raise InvalidUpdate(f"update has {header.vector_size} parameters, expected {self.vector_size}")
        limit = self.accumulator.max_bytes(self.vector_size)
        if header.round == 0:
            admission = Admission(participant_id, header, UploadKind.INITIAL, limit)
            self.recheck(admission)
            return admission
        r = self.rounds.open
        admission = Admission(participant_id, header, UploadKind.UPDATE, limit, r.attempt if r else 0)
        self.recheck(admission)
        if header.num_examples < 1:
            raise InvalidUpdate("num_examples must be >= 1")
        declared = self.roster.members[participant_id].num_train
        if header.num_examples > declared:
            raise InvalidUpdate(f"num_examples {header.num_examples} exceeds the {declared} training examples "
                                "declared at join")
        return admission

    def recheck(self, admission: Admission) -> None:
        """What may have changed since the header was admitted: the initial prompt arrived from elsewhere, the
        attempt closed or moved on to its decision, the deadline passed, the same member's other upload won."""
        pid, header = admission.participant_id, admission.header
        if admission.kind is UploadKind.EVALUATION_KEYS:
            assert self.keys is not None
            self.keys.check_evaluation_keys(pid)
            return
        if admission.kind is UploadKind.INITIAL:
            if self.store.latest_version(self.job_id) is not None:
                raise StaleRound("the initial prompt was already provided")
            if pid != self.roster.initialiser:
                raise NotSelected(f"the initial prompt comes from {self.roster.initialiser}, not {pid}")
            return
        r = self.rounds.open
        if r is None or header.round != r.number or r.attempt != admission.attempt:
            current = "none" if r is None else str(r.number)
            raise StaleRound(f"update for round {header.round}, the open round is {current}")
        if not r.selects(pid):
            raise NotSelected(f"{pid} is not selected for round {r.number}")
        if pid in r.reported:
            raise DuplicateUpdate(f"{pid} already submitted for round {r.number}")
        if r.state is not RoundState.TRAINING:
            raise StaleRound(f"round {r.number} is {r.state.value} (training is over); it takes no more updates")
        if self.rounds.clock() >= r.deadline:
            raise StaleRound(f"round {r.number} deadline has passed")

    def already_received(self, participant_id: str, header: PayloadHeader) -> bool:
        """True if this exact update (same digest) already counts for its round: a retry whose answer was lost.

        Only the attempt that counts is consulted (the open one, or the one that completed), so an update
        lost with a crashed attempt is taken again, and a *different* second update still gets DuplicateUpdate.
        """
        if header.job_id != self.job_id:
            return False
        if header.round == 0:
            stored = self.store.prompt(self.job_id, 0)
            return (participant_id == self.roster.initialiser and stored is not None
                    and hashlib.sha256(stored[1]).digest() == header.sha256)
        digests = self.store.received_digests(self.job_id, header.round, participant_id)
        if not digests:
            return False
        r = self.rounds.open
        if r is not None and r.number == header.round:
            counting = {r.attempt}
        else:
            counting = {row.attempt for row in self.store.rounds(self.job_id)
                        if row.round == header.round and row.state == RoundState.DONE.value}
        return any(digests.get(a) == header.sha256.hex() for a in counting)
