"""The key relay of one encrypted job: exchange keys, the public context, and sealed keys it cannot open.

No trusted provisioner: the job's *key dealer* (``he.dealer``, default the first participant to join) creates
the CKKS keys, publishes the key-less context here, and seals the secret context for each other member's
registered X25519 key.  The coordinator only stores and relays; a member joining later is listed to the
dealer (or, while the dealer is offline, to any key holder) as needing a key.  Only key holders are selected
for encrypted rounds.

Jobs whose coordinator computes an encrypted Gram matrix (``crypto.gram``: a Gram defence, or cohort
discovery in a levelled job) also need the dealer's public evaluation keys (relinearisation and Galois keys,
~9.7 MB, uploaded once as a payload of encoding ``ckks-evalkeys-v1``); their rounds open only once those are in.

Every key arrives with its owner's signed attestation (``crypto.attest``) and is relayed with it, exactly as
signed: members verify the signature against the federation CA before they seal to a key or accept one, so a
relay that swaps, injects or replays a key is refused by them, and their report (``refused``) pauses the job.
The coordinator checks only that a statement is about the key, the job and the caller it came with (a
mistake is refused at upload); it takes no trust decision for the members, who do not trust it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import structlog

from fedprompt.coordinator.hegram import GramRound
from fedprompt.coordinator.store import Store
from fedprompt.crypto.attest import Attestation, digest
from fedprompt.crypto.ckks import CkksParams, EncryptedSum, PublicContext
from fedprompt.crypto.gram import MAX_EVALUATION_KEY_BYTES, GramEvaluator
from fedprompt.crypto.sealing import PUBLIC_KEY_BYTES
from fedprompt.errors import (
    DuplicateUpdate,
    InvalidUpdate,
    NotEnrolled,
    PayloadTooLarge,
    PreconditionFailed,
    clip,
    quoted,
)
from fedprompt.protocol import KeyState

log = structlog.get_logger("coordinator.keys")

MAX_SEALED_BYTES = 1024 * 1024
MAX_FAULT_CHARS = 400


class JobKeys:
    """Who may deal, who holds the key, and what to relay to whom, for one job."""

    def __init__(self, job_id: str, params: CkksParams, dealer: str, store: Store) -> None:
        self.job_id = job_id
        self.params = params
        self.preferred_dealer = dealer
        self.store = store
        self.exchange: dict[str, bytes] = {}
        self.attestations: dict[str, bytes] = {}  # member -> its exchange key's attestation (b"" unsigned)
        self.dealer_attestation = b""
        self.dealer: str | None = dealer or None
        self.context: PublicContext | None = None
        self.sealed: dict[str, tuple[str, bytes]] = {}
        self.evaluator: GramEvaluator | None = None
        self.log = log.bind(job_id=job_id)

    def register(self, participant_id: str, public_key: bytes, attestation: bytes = b"") -> bool:
        """Bind a member's X25519 public key, with its attestation, at join; True if this member is to deal."""
        if len(public_key) != PUBLIC_KEY_BYTES:
            raise InvalidUpdate(f"encrypted jobs need a {PUBLIC_KEY_BYTES}-byte X25519 exchange key at join, "
                                f"got {len(public_key)} bytes")
        self._check(attestation, participant_id, "exchange", (digest(public_key),))
        known = self.exchange.get(participant_id)
        if known is not None and known != public_key and self.holds(participant_id):
            raise InvalidUpdate(f"{participant_id} already holds this job's key under another exchange key")
        self.exchange[participant_id] = public_key
        self.attestations[participant_id] = attestation
        self.store.save_exchange_key(self.job_id, participant_id, public_key)
        self.store.save_attestation(self.job_id, participant_id, "exchange", attestation)
        if self.dealer is None:
            self.dealer = self._default_dealer()
            self.log.info("key dealer chosen", dealer=self.dealer)
        return self.dealer == participant_id and self.context is None

    def _check(self, attestation: bytes, participant_id: str, purpose: str, digests: tuple[bytes, ...]) -> None:
        """A statement, if the member signs (without certificates none does), must be about what it came with."""
        if attestation:
            Attestation.from_bytes(attestation).check_claims(job_id=self.job_id, identity=participant_id,
                                                             purpose=purpose, digests=digests)

    def refused(self, participant_id: str, reason: str) -> str:
        """A member's report that it refused relayed key material; the reason the job pauses with."""
        if participant_id not in self.exchange:
            raise NotEnrolled(f"{participant_id} has not joined job {self.job_id}")
        why = clip(reason, MAX_FAULT_CHARS)
        self.log.warning("key material refused by a member: pausing the job", participant=participant_id, reason=why)
        return f"key material refused by {participant_id}: {why}"

    def _default_dealer(self) -> str | None:
        """The dealer before anyone has published: ``he.dealer``, else the first member to register."""
        return self.preferred_dealer or next(iter(self.exchange), None)

    def holds(self, participant_id: str) -> bool:
        return participant_id == self.dealer and self.context is not None or participant_id in self.sealed

    def publish(self, participant_id: str, public_context: bytes, key_id: bytes, attestation: bytes = b"") -> None:
        """The dealer's public context and its attestation; refused from anyone else, twice, or when it carries a
        secret key."""
        if participant_id != self.dealer:
            raise NotEnrolled(f"{participant_id} is not the key dealer of job {self.job_id} ({self.dealer})")
        if self.context is not None:
            raise DuplicateUpdate(f"job {self.job_id} already has its public context")
        context = PublicContext(public_context, self.params, key_id)
        self._check(attestation, participant_id, "dealer", (key_id, digest(context.data)))
        self.context, self.dealer_attestation = context, attestation
        self.store.save_attestation(self.job_id, participant_id, "dealer", attestation)
        self.store.save_he_context(self.job_id, participant_id, key_id, context.data)
        self.log.info("public context published", dealer=participant_id, bytes=len(context.data),
                      **self.params.describe())

    def check_evaluation_keys(self, participant_id: str) -> int:
        """Before an evaluation-key upload is read: only the dealer, once, after its context; the byte limit."""
        if not self.params.multiplicative:
            raise PreconditionFailed(f"job {self.job_id} has no Gram defence nor encrypted cohort discovery: it "
                                     "takes no evaluation keys")
        if participant_id != self.dealer:
            raise NotEnrolled(f"{participant_id} is not the key dealer of job {self.job_id} ({self.dealer})")
        self.require_context()
        if self.evaluator is not None:
            raise DuplicateUpdate(f"job {self.job_id} already has its evaluation keys")
        return MAX_EVALUATION_KEY_BYTES

    def publish_evaluation_keys(self, participant_id: str, keys: bytes) -> None:
        """The dealer's relinearisation and Galois keys, checked against the job's context and key id."""
        self.check_evaluation_keys(participant_id)
        self.evaluator = GramEvaluator(self.require_context(), keys)
        self.store.save_evaluation_keys(self.job_id, keys)
        self.log.info("evaluation keys published", dealer=participant_id, bytes=len(keys))

    def restore(self) -> None:
        """Reload the relay after a coordinator restart: exchange keys, the public context, the sealed keys and
        (Gram jobs) the evaluation keys, each parsed and checked again as on upload.  Without them an encrypted
        job could never open another round: its members hold their keys and would not deal or upload again.
        A dealer chosen but not yet published is not stored; the first registered member (or ``he.dealer``)
        deals again.  All or nothing: if any stored part fails its check, the relay is left as it was."""
        exchange = self.store.exchange_keys(self.job_id)
        dealer, context, evaluator = None, None, None
        stored = self.store.he_context(self.job_id)
        if stored is not None:
            dealer, key_id, data = stored
            context = PublicContext(data, self.params, key_id)
            keys = self.store.evaluation_keys(self.job_id)
            evaluator = GramEvaluator(context, keys) if keys is not None else None
        self.exchange, self.context, self.evaluator = exchange, context, evaluator
        self.attestations = {p: a for p, a in self.store.attestations(self.job_id, "exchange").items() if p in exchange}
        self.dealer_attestation = self.store.attestations(self.job_id, "dealer").get(dealer or "", b"")
        self.dealer = dealer or self._default_dealer()
        self.sealed = self.store.sealed_keys(self.job_id)
        self.log.info("key relay restored", dealer=self.dealer, context=self.context is not None,
                      holders=len(self.sealed) + (self.context is not None), evaluation_keys=self.evaluator is not None)

    def progress(self) -> tuple[object, ...]:
        """How far the relay got, as one comparable value (``coordinator.tasks.dispatch_state``)."""
        return self.dealer, self.context is not None, len(self.sealed), len(self.exchange)

    def ready(self) -> bool:
        """Whether encrypted rounds can run: the public context, and for an encrypted Gram matrix the evaluation keys."""
        return self.context is not None and (not self.params.multiplicative or self.evaluator is not None)

    def share(self, sender: str, recipient: str, blob: bytes) -> None:
        """Relay a sealed key from a key holder to a member that has none yet."""
        if self.context is None:
            raise PreconditionFailed(f"job {self.job_id} has no public context yet")
        if not self.holds(sender):
            raise NotEnrolled(f"{sender} holds no key of job {self.job_id} to share")
        if recipient not in self.exchange:
            raise InvalidUpdate(f"{quoted(recipient)} has no registered exchange key in job {self.job_id}")
        if self.holds(recipient):
            raise DuplicateUpdate(f"{recipient} already has the key of job {self.job_id}")
        if not blob or len(blob) > MAX_SEALED_BYTES:
            raise PayloadTooLarge(f"a sealed key must be 1..{MAX_SEALED_BYTES} bytes, got {len(blob)}")
        self.sealed[recipient] = (sender, blob)
        self.store.save_sealed_key(self.job_id, recipient, sender, blob)
        self.log.info("sealed key relayed", sender=sender, recipient=recipient)

    def to_seal_for(self, participant_id: str, online: Callable[[str], bool]) -> Iterator[str]:
        """The members ``participant_id`` is to seal the job key for now, in order: those registered without it,
        listed to the dealer while it is online, else to every key holder.  Lazy, so whether there is one
        (``KeyDoor.has_members_to_seal_for``, on every long-poll wake) costs no ``KeyState``."""
        if self.context is None or not self.holds(participant_id):
            return
        if participant_id == self.dealer or not online(self.dealer or ""):
            yield from (p for p in sorted(self.exchange) if not self.holds(p))

    def state_for(self, participant_id: str, online: Callable[[str], bool]) -> KeyState:
        """What ``participant_id`` may see: the public context, its own sealed key, and whom it should serve.

        Pending members are listed to the dealer while it is online, else to every online key holder (the
        first share wins; later ones get ALREADY_EXISTS).  A dealer whose context is in but whose evaluation
        keys are not (it stopped between the two uploads) is told it owes them: nothing else would ever ask,
        and a Gram job cannot open a round without them.
        """
        if self.context is None:
            return KeyState(dealer_id=self.dealer or "")
        sender, blob = self.sealed.get(participant_id, ("", b""))
        pending = tuple((p, self.exchange[p], self.attestations.get(p, b""))
                        for p in self.to_seal_for(participant_id, online))
        owes = participant_id == self.dealer and not self.ready()  # the context is in: only evaluation keys lack
        return KeyState(self.context.data, self.context.key_id, self.dealer or "", blob, sender,
                        self.exchange.get(sender, b""), pending, owes, self.dealer_attestation,
                        self.attestations.get(sender, b""))

    def require_context(self) -> PublicContext:
        if self.context is None:
            raise PreconditionFailed(f"job {self.job_id} waits for its key dealer to publish the public context")
        return self.context

    def new_sum(self, vector_size: int) -> EncryptedSum:
        return self.require_context().new_sum(vector_size)

    def new_gram_round(self, vector_size: int) -> GramRound:
        if self.evaluator is None:
            raise PreconditionFailed(f"job {self.job_id} waits for its key dealer's evaluation keys")
        return GramRound(self.require_context(), self.evaluator, vector_size)
