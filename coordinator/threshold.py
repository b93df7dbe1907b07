"""A threshold-CKKS job on the coordinator (``he.mode = "threshold"``): the key-setup relay, the choice of
decryptors, and the collection of their sealed decryption shares, with a new upload attempt when one is late.

The coordinator holds no key and never a share of one.  It relays what members publish (exchange keys, public
key shares, each with its owner's attestation, and Shamir sub-shares sealed to one recipient) and computes the
collective public key from the public shares, as any member does, to frame and check ciphertexts.  Decryption
shares reach it masked under the members' group key (``crypto.sealing.group_key``), which it never sees: it adds
the t masked shares to the sum's ``c0`` and compresses the result key-less (``crypto.threshold_masked``), one
small polynomial per chunk that only members can unmask; t shares in the clear would decrypt the aggregate.  A
member dropped before answering stalls nothing: the round's deadline notes it in the round's ``RoundMemory``
and the round machine opens a new attempt, a new ``ThresholdRound`` (a fresh ``a_r``, re-uploaded by the members
online), as ``crypto.threshold_seeded`` requires, since a
member makes one decryption share per round attempt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from fedprompt.coordinator.keys import JobKeys
from fedprompt.coordinator.store import Store
from fedprompt.crypto import threshold_masked
from fedprompt.crypto.attest import Attestation, digest
from fedprompt.crypto.ckks import EncryptedSum, PublicContext
from fedprompt.crypto.errors import InvalidCiphertext
from fedprompt.crypto.sealing import PUBLIC_KEY_BYTES
from fedprompt.crypto.threshold import ThresholdContext, ThresholdParams, crp
from fedprompt.crypto.threshold_seeded import UploadRound, job_seed, reference_polys
from fedprompt.errors import (
    DuplicateUpdate,
    InvalidUpdate,
    NotEnrolled,
    NotSelected,
    PayloadTooLarge,
    PreconditionFailed,
    quoted,
)
from fedprompt.protocol import KeyState, ThresholdKeyState
from fedprompt.wire.threshold import ThresholdVersion, pack_version

log = structlog.get_logger("coordinator.threshold")

#: Key material per page of the key relay (``ThresholdRelay.state_for``): half the default 4 MiB gRPC message.
PAGE_BYTES = 2 * 1024 * 1024
_ITEM_OVERHEAD = 16  # protobuf framing of one relayed item, beyond its fields' bytes
#: The largest sealed sub-share or masked decryption share relayed (a share of 100,000 floats is ~800 KB).
MAX_SHARE_BYTES = 4 * 1024 * 1024


class ThresholdRelay:
    """The key relay of one threshold job: who published what, and the collective key once all n did."""

    def __init__(self, job_id: str, members: Sequence[str], params: ThresholdParams) -> None:
        self.job_id, self.members, self.params = job_id, sorted(members), params
        self.context = ThresholdContext(params)
        self.seed = job_seed(job_id, self.members)
        self.share_bytes = len(self.context.ring.moduli) * self.context.ring.n * 8
        self.exchange: dict[str, tuple[bytes, bytes]] = {}
        self.shares: dict[str, tuple[bytes, bytes]] = {}
        self.dealt: dict[str, dict[str, bytes]] = {}
        self.pending: dict[str, dict[str, bytes]] = {}  # dealings still coming in batches
        self.arrivals: list[tuple[str, str]] = []  # (kind, member) of each item as it first came: pages' order
        self.public: PublicContext | None = None
        self.log = log.bind(job_id=job_id)

    def check_member(self, who: str) -> None:
        if who not in self.members:
            raise NotEnrolled(f"{quoted(who)} is not one of the {len(self.members)} members of threshold job "
                              f"{self.job_id}")

    def index(self, who: str) -> int:
        """A member's Shamir index: its place among the sorted members, from 1."""
        self.check_member(who)
        return self.members.index(who) + 1

    def _check(self, attestation: bytes, who: str, purpose: str, key: bytes) -> None:
        """A statement, if the member signs, must be about what it came with (members verify the signature)."""
        if attestation:
            Attestation.from_bytes(attestation).check_claims(job_id=self.job_id, identity=who, purpose=purpose,
                                                             digests=(digest(key),))

    def register(self, who: str, key: bytes, attestation: bytes = b"") -> None:
        """A member's X25519 exchange key (at join); a different one after it dealt is refused."""
        self.check_member(who)
        if len(key) != PUBLIC_KEY_BYTES:
            raise InvalidUpdate(f"a threshold job needs a {PUBLIC_KEY_BYTES}-byte exchange key, got {len(key)}")
        self._check(attestation, who, "exchange", key)
        if who in self.exchange and self.exchange[who][0] != key and (who in self.dealt or who in self.pending or self.public):
            raise InvalidUpdate(f"{who} already dealt in job {self.job_id} under another exchange key")
        if who not in self.exchange:
            self.arrivals.append(("exchange", who))
        self.exchange[who] = (key, attestation)

    def publish_share(self, who: str, share: bytes, attestation: bytes = b"") -> None:
        """A member's public key share, once; with the last of the n, the collective key."""
        self.check_member(who)
        if len(share) != self.share_bytes:
            raise InvalidUpdate(f"a public key share has {self.share_bytes} bytes, got {len(share)}")
        self._check(attestation, who, "key-share", share)
        if who in self.shares:
            raise DuplicateUpdate(f"{who} already published its key share of job {self.job_id}")
        self.shares[who] = (share, attestation)
        self.arrivals.append(("share", who))
        if len(self.shares) == len(self.members):
            ring = self.context.ring
            polys = [np.frombuffer(self.shares[m][0], dtype=np.uint64).astype(object).reshape(-1, ring.n)
                     for m in self.members]
            self.context.set_public_key(crp(ring, self.seed), polys)
            self.public = PublicContext(self.context.public_bytes(), self.params.ckks, self.context.key_id)
            self.log.info("collective public key formed",
                          key_id=self.context.key_id.hex()[:16], **self.params.describe())

    def deal(self, dealer: str, sealed: Mapping[str, bytes]) -> dict[str, bytes]:
        """A member's sealed sub-shares for the other members, at once or in batches (a dealing at n = 100 is
        6.5 MB, beyond a gRPC message); the dealing counts once every other member has one.  A recipient already
        dealt to keeps its first blob (a restarted member seals its stored dealing afresh); a complete dealing is
        refused.  Returns the blobs newly kept."""
        self.check_member(dealer)
        if dealer in self.dealt:
            raise DuplicateUpdate(f"{dealer} already dealt its sub-shares in job {self.job_id}")
        others = {m for m in self.members if m != dealer}
        if not sealed or not set(sealed) <= others:
            raise InvalidUpdate(f"a dealing seals sub-shares for the {len(others)} other members only")
        if any(not blob or len(blob) > MAX_SHARE_BYTES for blob in sealed.values()):
            raise PayloadTooLarge(f"a sealed sub-share must be 1..{MAX_SHARE_BYTES} bytes")
        pending = self.pending.setdefault(dealer, {})
        new = {who: blob for who, blob in sealed.items() if who not in pending}
        pending.update(new)
        if len(pending) == len(others):
            self.dealt[dealer] = self.pending.pop(dealer)
            self.arrivals.append(("dealt", dealer))
            self.log.info("key sub-shares relayed", dealer=dealer)
        return new

    def state_for(self, who: str, crl: bytes = b"", page: int = 0, page_bytes: int = PAGE_BYTES) -> ThresholdKeyState:
        """Page ``page`` of what ``who`` sees (``protocol.all_pages`` joins them): exchange keys, public key shares
        and the sub-shares dealt to ``who`` in the order they came, cut into pages of at most ``page_bytes`` of key
        material (one item at least); the CRL rides on page 0.  A new item comes last, so pages already cut keep
        their items."""
        self.check_member(who)
        items: dict[str, Mapping[str, tuple[bytes, ...]]] = {"exchange": self.exchange, "share": self.shares,
                 "dealt": {d: (blobs[who],) for d, blobs in self.dealt.items() if who in blobs}}
        order = [(kind, m) for kind, m in self.arrivals if m in items[kind]]
        cuts = _cuts([len(m) + sum(map(len, items[kind][m])) + _ITEM_OVERHEAD for kind, m in order], page_bytes)
        if not 0 <= page < len(cuts) - 1:
            raise InvalidUpdate(f"the key relay of job {self.job_id} has {len(cuts) - 1} pages for {quoted(who)}, "
                                f"not page {page}")
        chosen = order[cuts[page] : cuts[page + 1]]

        def part(kind: str) -> tuple[Any, ...]:
            return tuple((m, *items[kind][m]) for k, m in chosen if k == kind)

        return ThresholdKeyState(part("exchange"), part("share"), part("dealt"), who in self.dealt,
                                 crl if page == 0 else b"", page + 1 if page + 2 < len(cuts) else 0)

    @property
    def ready(self) -> bool:
        """Rounds may open: the collective key is formed and every member has dealt."""
        return self.public is not None and len(self.dealt) == len(self.members)

    def require(self) -> PublicContext:
        if not self.ready or self.public is None:
            raise PreconditionFailed(f"threshold job {self.job_id} waits for its members' key setup")
        return self.public


def _cuts(sizes: Sequence[int], budget: int) -> list[int]:
    """Page boundaries over items of ``sizes``: greedy, a page closes before the item that would pass ``budget``
    (an item larger than the budget has a page of its own); ``[0, ..., len(sizes)]``."""
    cuts, used = [0], 0
    for k, size in enumerate(sizes):
        if used and used + size > budget:
            cuts.append(k)
            used = 0
        used += size
    return [*cuts, len(sizes)]


def pick_decryptors(members: Sequence[str], online: Callable[[str], bool], t: int, round_: int,
                    avoid: Sequence[str] = ()) -> tuple[str, ...] | None:
    """t online members to decrypt round ``round_``: those that did not miss the last attempt first, rotating
    with the round so no member answers every round; None while fewer than t are online."""
    ordered = sorted(members)
    start = round_ % len(ordered)
    rotated = [m for m in ordered[start:] + ordered[:start] if online(m)]
    chosen = [m for m in rotated if m not in avoid][:t]
    chosen += [m for m in rotated if m in avoid][: t - len(chosen)]
    return tuple(sorted(chosen)) if len(chosen) == t else None


@dataclass
class Decryption:
    """One round attempt's folded sum waiting for its decryptors' masked shares."""

    round: int
    attempt: int
    uploaders: tuple[str, ...]
    declared_weight: float
    total: bytes
    decryptors: tuple[str, ...]
    relay: ThresholdRelay
    vector_size: int
    shares: dict[str, bytes] = field(default_factory=dict)

    def submit(self, who: str, masked: bytes) -> None:
        """A decryptor's masked share, checked for its member, size and residues before it is kept."""
        if who not in self.decryptors:
            raise NotSelected(f"{quoted(who)} is not a decryptor of round {self.round} attempt {self.attempt}")
        if who in self.shares:
            raise DuplicateUpdate(f"{who} already sent its decryption share of round {self.round}")
        if not masked or len(masked) > MAX_SHARE_BYTES:
            raise PayloadTooLarge(f"a decryption share must be 1..{MAX_SHARE_BYTES} bytes, got {len(masked)}")
        try:
            threshold_masked.parse_share(self.relay.context, masked, self.relay.index(who),
                                         self.relay.params.ckks.num_ciphertexts(self.vector_size))
        except InvalidCiphertext as exc:
            raise InvalidUpdate(f"the decryption share of {who} is refused: {exc}") from exc
        self.shares[who] = masked

    def awaiting(self, who: str) -> bool:
        """Whether ``who`` is named to decrypt and has not answered yet."""
        return who in self.decryptors and who not in self.shares

    @property
    def complete(self) -> bool:
        return len(self.shares) == len(self.decryptors)

    @property
    def missing(self) -> tuple[str, ...]:
        return tuple(m for m in self.decryptors if m not in self.shares)

    @property
    def answered(self) -> dict[str, tuple[str, ...]]:
        """Each decryptor that sent its share, bound to this attempt's uploaders for the rest of the round."""
        return {m: self.uploaders for m in self.shares}

    def version(self) -> bytes:
        """The global version to store once every share is in (``fedprompt.wire.threshold``): the sum's ``c0``
        and the masked shares added and compressed, key-less; members unmask and decode it."""
        if not self.complete:
            raise PreconditionFailed(f"round {self.round} attempt {self.attempt} still waits for "
                                     f"{', '.join(self.missing)}")
        combined = threshold_masked.combine(self.relay.context, self.total, self.vector_size,
                                            {self.relay.index(m): self.shares[m] for m in self.decryptors})
        return pack_version(ThresholdVersion(self.round, self.attempt, self.uploaders, self.decryptors,
                                             self.declared_weight, combined))


@dataclass
class RoundMemory:
    """What a round's attempts remember of its earlier ones, one object for the whole round: the decryptors that
    did not answer the last attempt (``missed``, asked last) and the uploader set each member that answered an
    attempt made its share for (``bound``: a member decrypts no other set of the round,
    ``participant.threshold_keys``, so it is not asked to).  The job's ``ThresholdAccumulator`` keeps it across the
    round's attempts and starts a new one with each round; each attempt's ``ThresholdRound`` reads it and notes its
    own missed deadline into it.  In memory only: after a coordinator restart a bound member refuses instead."""

    missed: tuple[str, ...] = ()
    bound: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def note(self, decryption: Decryption) -> None:
        """An attempt's deadline passed: its silent decryptors go last, those that answered stay bound."""
        self.missed = decryption.missing
        self.bound.update(decryption.answered)

    def may_decrypt(self, who: str, uploaders: tuple[str, ...]) -> bool:
        return self.bound.get(who, uploaders) == uploaders


class ThresholdRound:
    """One round of a threshold job: the attempt's key-less fold, then its decryption; a decryptor that does not
    answer before the deadline makes the next attempt (fresh ``a_r``, the members online upload again)."""

    def __init__(self, relay: ThresholdRelay, round_: int, vector_size: int, attempt: int = 0,
                 memory: RoundMemory | None = None) -> None:
        """``attempt``: the round machine's attempt number (never repeated within a round); ``memory``: the round's
        earlier attempts (a fresh one for its first)."""
        self.relay, self.round, self.vector_size = relay, round_, vector_size
        self.attempt = attempt
        self.memory = memory if memory is not None else RoundMemory()
        self._open()

    def _open(self) -> None:
        """The attempt's empty fold (a Gram job's round keeps its uploads instead: ``GramThresholdRound``)."""
        self.sum: EncryptedSum = self.relay.require().new_sum(self.vector_size)
        self.weights: dict[str, float] = {}
        self.decryption: Decryption | None = None

    def add(self, who: str, attempt: int, ciphertext: bytes, weight: float) -> None:
        """Fold one member's upload of this attempt (parsed under the collective key first); ``weight``: the one
        its header declares, in the job's weight unit (``JobConfig.summand_weight``)."""
        self.relay.check_member(who)
        if attempt != self.attempt or self.decryption is not None:
            raise PreconditionFailed(f"round {self.round} takes uploads of attempt {self.attempt} only, before "
                                     "its decryption")
        if who in self.weights:
            raise DuplicateUpdate(f"{who} already uploaded to round {self.round} attempt {attempt}")
        parsed = self.sum.parse(ciphertext)
        ring = self.relay.context.ring
        bases = reference_polys(self.relay.context, UploadRound(self.relay.seed, self.round, attempt), len(parsed))
        if any(not np.array_equal(ring.read_ciphertext(ct)[1], a) for ct, a in zip(parsed, bases, strict=True)):
            raise InvalidUpdate(f"the upload of {who} is not seeded for round {self.round} attempt {attempt}")
        self.sum.add(parsed)
        self.weights[who] = float(weight)

    def close(self, online: Callable[[str], bool]) -> Decryption | None:
        """Close the fold and name t online decryptors, none bound to another uploader set of the round; None
        while fewer than t such members are online."""
        uploaders = tuple(sorted(self.weights))
        decryptors = pick_decryptors(self.relay.members, lambda who: online(who) and self.memory.may_decrypt(
            who, uploaders), self.relay.params.t, self.round, self.memory.missed)
        if decryptors is None or not self.weights:
            return None
        self.decryption = Decryption(self.round, self.attempt, uploaders,
                                     sum(self.weights.values()), self.sum.to_bytes(), decryptors, self.relay,
                                     self.vector_size)
        self.relay.log.info("aggregate sent for threshold decryption", round=self.round, attempt=self.attempt,
                            uploaders=len(self.weights), decryptors=list(decryptors))
        return self.decryption


class ThresholdKeyRelay(JobKeys):
    """A threshold job's keys as the rest of the job sees them (``JobKeys``'s interface over a
    ``ThresholdRelay``): no dealer and no sealed secret context; every member holds its share once the key
    setup is complete, and the single-key relay calls are refused."""

    def __init__(self, job_id: str, relay: ThresholdRelay, store: Store) -> None:
        super().__init__(job_id, relay.params.ckks, "", store)
        self.relay = relay
        self.dealer = None

    def register(self, participant_id: str, public_key: bytes, attestation: bytes = b"") -> bool:
        self.relay.register(participant_id, public_key, attestation)
        self.exchange[participant_id] = public_key
        self.attestations[participant_id] = attestation
        self.store.save_exchange_key(self.job_id, participant_id, public_key)
        self.store.save_attestation(self.job_id, participant_id, "exchange", attestation)
        return False

    def publish_share(self, who: str, share: bytes, attestation: bytes = b"") -> None:
        """``ThresholdRelay.publish_share``, then stored (with its attestation) for a restart."""
        self.relay.publish_share(who, share, attestation)
        self.store.save_relayed(self.job_id, "share", who, "", share)
        self.store.save_attestation(self.job_id, who, "key-share", attestation)

    def deal(self, dealer: str, sealed: Mapping[str, bytes]) -> None:
        """``ThresholdRelay.deal``, then what it kept stored for a restart."""
        for recipient, blob in sorted(self.relay.deal(dealer, sealed).items()):
            self.store.save_relayed(self.job_id, "dealt", dealer, recipient, blob)

    def restore(self) -> None:
        """Reload the relay after a coordinator restart: exchange keys, public shares and dealings replayed, each
        checked again as on arrival, into a fresh relay that replaces this one only once all of it passed."""
        fresh = ThresholdRelay(self.job_id, self.relay.members, self.relay.params)
        signed = {purpose: self.store.attestations(self.job_id, purpose) for purpose in ("exchange", "key-share")}
        for who, key in self.store.exchange_keys(self.job_id).items():
            fresh.register(who, key, signed["exchange"].get(who, b""))
        for who, _, share in self.store.relayed(self.job_id, "share"):
            fresh.publish_share(who, share, signed["key-share"].get(who, b""))
        dealings: dict[str, dict[str, bytes]] = {}
        for dealer, recipient, blob in self.store.relayed(self.job_id, "dealt"):
            dealings.setdefault(dealer, {})[recipient] = blob
        for dealer, sealed in dealings.items():
            fresh.deal(dealer, sealed)
        self.relay = fresh
        self.exchange = dict(self.store.exchange_keys(self.job_id))
        self.log.info("threshold key relay restored", exchange_keys=len(fresh.exchange), shares=len(fresh.shares),
                      dealt=len(fresh.dealt), ready=fresh.ready)

    def holds(self, participant_id: str) -> bool:
        return self.relay.ready and participant_id in self.relay.members

    def ready(self) -> bool:
        return self.relay.ready

    def progress(self) -> tuple[object, ...]:
        return len(self.relay.exchange), len(self.relay.shares), len(self.relay.dealt)

    def _single_key(self) -> PreconditionFailed:
        return PreconditionFailed(f"job {self.job_id} uses threshold keys (he.mode = 'threshold'): it has no key "
                                  "dealer and no single key to relay")

    def publish(self, participant_id: str, public_context: bytes, key_id: bytes, attestation: bytes = b"") -> None:
        raise self._single_key()

    def share(self, sender: str, recipient: str, blob: bytes) -> None:
        raise self._single_key()

    def check_evaluation_keys(self, participant_id: str) -> int:
        raise self._single_key()

    def state_for(self, participant_id: str, online: Callable[[str], bool]) -> KeyState:
        raise self._single_key()

    def require_context(self) -> PublicContext:
        return self.relay.require()
