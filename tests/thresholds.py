"""A threshold CKKS job as its members set it up, shared by the threshold tests: real SEAL keys, Shamir shares
dealt and sealed member to member with ``crypto.sealing``, and the collective public context; and a member's
door to the coordinator's key relay (``coordinator.threshold.ThresholdRelay``) without a network."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from fedprompt.coordinator.threshold import ThresholdRelay
from fedprompt.crypto import sealing
from fedprompt.crypto import threshold_seeded as seeded
from fedprompt.crypto.ckks import PublicContext
from fedprompt.crypto.rns import Poly
from fedprompt.crypto.threshold import KeyShare, Member, ThresholdContext, ThresholdParams, crp
from fedprompt.crypto.threshold_seeded import UploadRound
from fedprompt.protocol import ThresholdKeyState

SIZE = 4000  # one ciphertext: a few thousand floats


@dataclass
class Job:
    params: ThresholdParams
    context: ThresholdContext
    members: list[Member]
    keys: dict[int, KeyShare]
    public: PublicContext

    @property
    def q(self) -> np.ndarray:
        return self.context.ring.q(len(self.context.ring.moduli))

    def secret(self, indices: list[int]) -> Poly:
        """The sum of some members' own secrets (the collective secret when all of them)."""
        return sum((m._secret for m in self.members if m.index in indices), np.zeros_like(self.members[0]._secret)) % self.q


def key_setup(params: ThresholdParams, seed: bytes) -> tuple[ThresholdContext, list[Member], dict[int, KeyShare]]:
    """Collective key and Shamir key shares as members make them, dealt in the clear (the evaluation-key tests
    need only the keys; :func:`job` seals the dealing)."""
    context = ThresholdContext(params)
    members = [Member(params, context.ring, i) for i in range(1, params.members + 1)]
    a = crp(context.ring, seed)
    context.set_public_key(a, [m.public_share(a) for m in members])
    dealt = {m.index: m.deal() for m in members}
    return context, members, {j: KeyShare(params, context.ring, j, {i: dealt[i][j] for i in dealt}) for j in dealt}


@cache
def job(members: int, seeded: bool = False) -> Job:
    """Key generation as members run it: public-key shares on the job's CRP, and Shamir shares of each
    secret sealed for each recipient with ``crypto.sealing`` (X25519 + AES-GCM), opened by the recipient.
    ``seeded``: a job whose uploads are seeded (``test_threshold_seeded``); here, public-key uploads."""
    params = ThresholdParams(members=members, seeded_uploads=seeded)
    context = ThresholdContext(params)
    a = crp(context.ring, b"job-seed")
    parties = [Member(params, context.ring, i) for i in range(1, members + 1)]
    context.set_public_key(a, [m.public_share(a) for m in parties])
    exchange = {m.index: sealing.new_exchange_key() for m in parties}
    dealt: dict[int, dict[int, bytes]] = {j: {} for j in exchange}
    for m in parties:
        for j, share in m.deal().items():
            ids = {"job_id": "job-1", "sender_id": f"p{m.index}", "recipient_id": f"p{j}"}
            blob = sealing.seal(share, sender=exchange[m.index],
                                recipient_public=sealing.public_bytes(exchange[j]), **ids)
            dealt[j][m.index] = sealing.unseal(blob, recipient=exchange[j],
                                               sender_public=sealing.public_bytes(exchange[m.index]), **ids)
    keys = {j: KeyShare(params, context.ring, j, dealt[j]) for j in exchange}
    return Job(params, context, parties, keys, PublicContext(context.public_bytes(), params.ckks, context.key_id))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation: how much of ``b`` an attacker's guess ``a`` recovers."""
    return float(np.corrcoef(a, b)[0, 1])


class RelayDoor:
    """One member's calls to the relay, with its identity, as the coordinator's servicer would make them."""

    def __init__(self, relay: ThresholdRelay, who: str) -> None:
        self.relay, self.who = relay, who

    def threshold_keys(self, job_id: str) -> ThresholdKeyState:
        return self.relay.state_for(self.who)

    def publish_share(self, job_id: str, share: bytes, attestation: bytes) -> None:
        self.relay.publish_share(self.who, share, attestation)

    def deal(self, job_id: str, sealed: dict[str, bytes]) -> None:
        self.relay.deal(self.who, sealed)
def uploads(j: Job, upload: UploadRound, uploaders: Sequence[int], seed: int = 0) -> tuple[bytes, np.ndarray, float]:
    """The named members upload ``w_i * x_i`` and ``w_i`` for ``upload`` (seeded); the coordinator folds key-less."""
    rng = np.random.default_rng(seed)
    total, expected, weight = j.public.new_sum(SIZE), np.zeros(SIZE), 0.0
    for member in j.members:
        update, w = rng.normal(0, 0.1, SIZE), float(rng.integers(1, 20))
        if member.index in uploaders:
            total.add(total.parse(seeded.encrypt(j.context, member, update * w, w, upload)))
            expected, weight = expected + update * w, weight + w
    return total.to_bytes(), expected, weight
