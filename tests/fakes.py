"""Shared fakes for tests that drive the coordinator as plain objects: a clock the test moves by hand, an offload
that holds the homomorphic step until the test finishes it, a key relay as an encrypted job's dealer leaves it,
and synthetic update payloads (plaintext float32, CKKS-encrypted, and levelled containers of either) built the way
participants build them.

Torch-free, like every module the coordinator's tests import (``tests/unit/test_torch_free.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fedprompt.coordinator.keys import JobKeys
from fedprompt.coordinator.rounds import RoundState
from fedprompt.coordinator.runtime import JobRuntime
from fedprompt.coordinator.store import Store
from fedprompt.crypto.audit import check
from fedprompt.crypto.ckks import _HEADER, SecretContext
from fedprompt.crypto.ckks import ENCODING as CKKS
from fedprompt.crypto.gram import evaluation_keys
from fedprompt.crypto.sealing import new_exchange_key, public_bytes
from fedprompt.participant.codec import job_codec
from fedprompt.protocol import CoordinatorLink, Payload, TaskKind, ThresholdKeyState
from fedprompt.wire.bundle import unpack_bundle
from fedprompt.wire.levels import encoding, pack
from fedprompt.wire.payload import FLOAT32, encode_vector

#: Length of the exchanged vector in the hand-made plaintext and encrypted updates.
SIZE = 6
#: Sizes of the global and expert levels in the hand-made levelled updates.
G, E = 5, 3
#: Deltas and example counts of a round with one scaled update: norm bounding (f = 1) keeps a and b, rejects c.
OUTLIER_DELTAS = {"a": (np.array([0.1, 0.2, 0.0, -0.1, 0.05, 0.0]), 10),
                  "b": (np.array([0.12, 0.18, 0.01, -0.08, 0.04, 0.01]), 20),
                  "c": (np.array([2.0, -3.0, 1.5, 2.0, -1.0, 2.5]), 30)}


class Clock:
    """A controllable clock: ``clock()`` reads ``now`` (1000 s at the start), which the test sets or advances."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move the clock on by ``seconds``; returns the new time."""
        self.now += seconds
        return self.now


class Deferred:
    """An offload that keeps the Gram step for the test to finish when it chooses, as a worker thread would."""

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[[], Any], Callable[[Any], None]]] = []

    def __call__(self, work: Callable[[], Any], done: Callable[[Any], None]) -> None:
        self.pending.append((work, done))

    def finish(self) -> None:
        """Run the newest pending step and hand its result back."""
        work, done = self.pending.pop()
        done(work())


class ThresholdDoor:
    """One member's threshold key-setup calls on a job, as ``LocalLink`` or the servicers make them."""

    def __init__(self, job: JobRuntime, who: str) -> None:
        self.job, self.who = job, who

    def threshold_keys(self, job_id: str) -> ThresholdKeyState:
        return self.job.relay.threshold_keys(self.who)

    def publish_share(self, job_id: str, share: bytes, attestation: bytes) -> None:
        self.job.relay.publish_share(self.who, share, attestation)

    def deal(self, job_id: str, sealed: dict[str, bytes]) -> None:
        self.job.relay.deal(self.who, sealed)


def exchange_key() -> bytes:
    """A fresh X25519 public key, as a member of an encrypted job registers at join."""
    return public_bytes(new_exchange_key())


def dealt_keys(store: Store, job_id: str, secret: SecretContext, members: tuple[str, ...],
               evaluation: bool = False) -> JobKeys:
    """An encrypted job's key relay as its dealer (the first of ``members``) leaves it: every member's exchange
    key registered, the public context of ``secret`` published, a sealed key (a blob the coordinator cannot open)
    relayed to each other member, and with ``evaluation`` the dealer's evaluation keys for a Gram matrix."""
    keys = JobKeys(job_id, secret.params, "", store)
    for member in members:
        keys.register(member, exchange_key())
    keys.publish(members[0], secret.public_bytes(), secret.key_id)
    if evaluation:
        keys.publish_evaluation_keys(members[0], evaluation_keys(secret))
    for member in members[1:]:
        keys.share(members[0], member, b"sealed for " + member.encode())
    return keys


def plain_update(job_id: str, round_: int, vector: np.ndarray, n: int = 10) -> Payload:
    """A plaintext float32 update (or, for round 0, the initial prompt) of ``n`` examples."""
    return Payload(job_id, round_, FLOAT32, vector.size, encode_vector(vector), n)


def encrypted_update(secret: SecretContext, job_id: str, round_: int, delta: np.ndarray, n: int,
                     weight_slot: bool = True) -> Payload:
    """An encrypted update as a participant sends it: ``n * delta`` with ``n`` in the weight slot (0 there for a
    Gram defence's rounds, ``weight_slot=False``), of ``n`` examples."""
    return Payload(job_id, round_, CKKS, delta.size, secret.encrypt(delta * n, n if weight_slot else 0), n)


def encrypted_initial(secret: SecretContext, job_id: str, size: int = SIZE) -> Payload:
    """The initial prompt (version 0) of an encrypted job: zeros with weight 1."""
    return Payload(job_id, 0, CKKS, size, secret.encrypt(np.zeros(size), 1))


def levels_update(job_id: str, round_: int, g: np.ndarray, e: np.ndarray, n: int = 10) -> Payload:
    """A plaintext levelled update: a container with the global part ``g`` and the expert part ``e``."""
    return Payload(job_id, round_, encoding(FLOAT32), g.size + e.size,
                   pack({"global": (g.size, encode_vector(g)), "expert": (e.size, encode_vector(e))}), n)


def encrypted_levels_update(secret: SecretContext, job_id: str, round_: int, g: np.ndarray, e: np.ndarray,
                            n: int) -> Payload:
    """An encrypted levelled update: each part encrypted as ``n * part`` with ``n`` in its weight slot; round 0
    (the initial prompt) declares no examples."""
    parts = {"global": (g.size, secret.encrypt(g * n, n)), "expert": (e.size, secret.encrypt(e * n, n))}
    return Payload(job_id, round_, encoding(CKKS), g.size + e.size, pack(parts), n if round_ else 0)


class _Holder:
    """What a participant codec needs of a key holder: the secret context (``KeyHolder.require``)."""

    def __init__(self, secret: SecretContext) -> None:
        self.secret = secret

    def require(self) -> SecretContext:
        return self.secret


def answer_checks(job: JobRuntime, secret: SecretContext) -> int:
    """Play an encrypted round's two checkers (``coordinator.checks``) with the job's ``secret``: each downloads
    the check bundle and reports what a participant's own codec says of every part (the aggregate, or each
    update masked), until no check awaits.  Returns how many checks were answered."""
    levels = job.levels
    codec = job_codec(job.aggregator.gram, job.job_id, job.vector_size, _Holder(secret),  # type: ignore[arg-type]
                      levels.sizes() if levels is not None else None, _no_download, lambda v, x: None)
    answered = 0
    while (r := job.open) is not None and r.state is RoundState.CHECKING and r.check is not None:
        check = r.check
        for pid in check.checkers:
            parts = unpack_bundle(job.check_bundle(pid, r.number).data)
            job.report_check(pid, r.number, [codec.check(data, masked) for masked, data in parts])
        answered += 1
    return answered


def _no_download(version: int) -> Payload:
    raise AssertionError("checking a bundle downloads no version")


def check_over_links(links: Mapping[str, CoordinatorLink], secrets: Mapping[str, SecretContext], job_id: str,
                     round_: int, size: int) -> list[str]:
    """The members told to CHECK round ``round_`` download their bundle over their own link and report a verdict
    per part (plain ``ckks-v1`` vectors of ``size``); returns who checked, in order."""
    checkers = [name for name, link in links.items() if link.get_task(job_id, 0).kind is TaskKind.CHECK]
    for name in checkers:
        parts = unpack_bundle(links[name].check_bundle(job_id, round_).data)
        links[name].report_check(job_id, round_, [check(secrets[name], data, size, masked) for masked, data in parts])
    return checkers


def relabelled(data: bytes, key_id: bytes) -> bytes:
    """An encrypted vector made under another key, its header rewritten to name ``key_id``: what a poisoning
    member sends, and what a coordinator without the key cannot tell apart from an honest ciphertext."""
    magic, _, size, count = _HEADER.unpack_from(data)
    return _HEADER.pack(magic, key_id, size, count) + data[_HEADER.size:]
