"""The relay of a threshold job's collective Gram evaluation keys (``crypto.threshold_gram``; ``docs/he.md``,
"The encrypted-Gram defence under threshold keys", round path step 2).

Once the collective public key is formed and every member dealt, each member publishes its first round (RKG's
first round and one RTG share per Galois element: ``threshold_gram.round1_elements``), then, once every first
round is in, its answer to RKG's second round.  Each message travels on its own (each under a 4 MiB gRPC
message) with the member's one attestation of the round (``crypto.attest``, purposes ``eval-key-round1`` and
``eval-key-round2``), which lists the digests of all its messages of that round in element order.  The
coordinator checks each message's form and that the attestation claims it at its position; members verify the
signatures, compute the summed first round and assemble their own copy of the keys from the attested messages
(``participant.threshold_gramkeys``): a relay that swaps, drops or replays a message is refused there.  The
coordinator assembles the keys too, for its ``GramEvaluator``, once every second round is in.  Everything
relayed is stored (``Store.save_relayed``, kinds ``gram-1`` and ``gram-2``) and replayed after a restart.
"""

from __future__ import annotations

from collections.abc import Mapping

from fedprompt.coordinator.store import Store
from fedprompt.coordinator.threshold import _ITEM_OVERHEAD, PAGE_BYTES, ThresholdRelay, _cuts
from fedprompt.crypto import threshold_gram
from fedprompt.crypto.attest import Attestation, digest
from fedprompt.crypto.errors import AttestationError, InvalidCiphertext
from fedprompt.crypto.gram import GramEvaluator
from fedprompt.errors import DuplicateUpdate, InvalidUpdate, PreconditionFailed
from fedprompt.protocol import GramKeyState

PURPOSES = {1: "eval-key-round1", 2: "eval-key-round2"}


class GramKeyRelay:
    """The Gram evaluation-key messages of one threshold job, and the coordinator's evaluator once all are in."""

    def __init__(self, relay: ThresholdRelay, store: Store | None = None) -> None:
        self.relay, self.store = relay, store
        self.elements = threshold_gram.round1_elements(relay.params)
        self.round1: dict[str, dict[int, tuple[bytes, bytes]]] = {}
        self.round2: dict[str, tuple[bytes, bytes]] = {}
        self.evaluator: GramEvaluator | None = None
        self.arrivals: list[tuple[int, str, int]] = []  # (round, member, element) as each came: pages' order

    def _expected(self, round_: int) -> int:
        return len(self.elements) if round_ == 1 else 1

    def _complete(self, round_: int) -> bool:
        if round_ == 1:
            return all(len(self.round1.get(m, {})) == len(self.elements) for m in self.relay.members)
        return all(m in self.round2 for m in self.relay.members)

    def publish(self, who: str, round_: int, element: int, message: bytes, attestation: bytes) -> None:
        """Member ``who``'s message of round ``round_`` for ``element`` (0 in round 2), with its attestation of
        the round.  A resent identical message is a no-op (a restarted member resends what it stored); another
        one is refused, as is round 2 before every first round is in."""
        self.relay.check_member(who)
        if not self.relay.ready:
            raise PreconditionFailed(f"threshold job {self.relay.job_id} makes its Gram keys after its key setup")
        if round_ not in PURPOSES or element not in (self.elements if round_ == 1 else (0,)):
            raise InvalidUpdate(f"no Gram evaluation-key message of round {round_} for element {element}")
        if round_ == 2 and not self._complete(1):
            raise PreconditionFailed(f"round 2 of the Gram keys of job {self.relay.job_id} waits for every first round")
        held = self.round1.get(who, {}) if round_ == 1 else ({0: self.round2[who]} if who in self.round2 else {})
        if element in held:
            if held[element][0] == message:
                return
            raise DuplicateUpdate(f"{who} already sent its round-{round_} Gram key message for element {element}")
        if any(att != attestation for _, att in held.values()):
            raise InvalidUpdate(f"the round-{round_} Gram key messages of {who} must carry one attestation")
        try:
            threshold_gram.check_message(self.relay.context, round_, self.relay.index(who), element, message)
            if attestation:  # none in an unattested (--insecure) federation, as ``ThresholdRelay`` allows
                claims = Attestation.from_bytes(attestation)
                position = self.elements.index(element) if round_ == 1 else 0
                claims.check_claims(job_id=self.relay.job_id, identity=who, purpose=PURPOSES[round_],
                                    digests=claims.digests)
                if len(claims.digests) != self._expected(round_) or claims.digests[position] != digest(message):
                    raise AttestationError(f"the round-{round_} Gram key message of {who} is not the one it signed")
        except (InvalidCiphertext, AttestationError) as exc:
            raise InvalidUpdate(f"the Gram key message of {who} is refused: {exc}") from exc
        if round_ == 1:
            self.round1.setdefault(who, {})[element] = (message, attestation)
        else:
            self.round2[who] = (message, attestation)
        self.arrivals.append((round_, who, element))
        if self.store is not None:
            self.store.save_relayed(self.relay.job_id, f"gram-{round_}", who, str(element), message)
            self.store.save_attestation(self.relay.job_id, who, PURPOSES[round_], attestation)
        if round_ == 2 and self._complete(2):
            self._assemble()

    def _assemble(self) -> None:
        """The coordinator's copy of the keys, checked to load under the collective public context."""
        index = self.relay.index
        first = {index(m): {g: msg for g, (msg, _) in parts.items()} for m, parts in self.round1.items()}
        second = {index(m): msg for m, (msg, _) in self.round2.items()}
        keys = threshold_gram.assemble(self.relay.context, self.relay.seed, first, second)
        self.evaluator = GramEvaluator(self.relay.require(), keys)
        self.relay.log.info("collective Gram evaluation keys assembled", bytes=len(keys))

    @property
    def ready(self) -> bool:
        return self.evaluator is not None

    def state(self, page: int = 0, page_bytes: int = PAGE_BYTES) -> GramKeyState:
        """Page ``page`` of the messages (``protocol.all_gram_pages`` joins them), in order of arrival, cut into
        pages of at most ``page_bytes`` (one message at least); a new message comes last, so pages already cut
        keep their messages."""
        def item(round_: int, who: str, element: int) -> tuple[bytes, bytes]:
            return self.round1[who][element] if round_ == 1 else self.round2[who]

        cuts = _cuts([len(a[1]) + sum(map(len, item(*a))) + _ITEM_OVERHEAD for a in self.arrivals], page_bytes)
        if not 0 <= page < len(cuts) - 1:
            raise InvalidUpdate(f"the Gram key relay of job {self.relay.job_id} has {len(cuts) - 1} pages, not "
                                f"page {page}")
        chosen = self.arrivals[cuts[page] : cuts[page + 1]]
        return GramKeyState(tuple((who, g, *item(r, who, g)) for r, who, g in chosen if r == 1),
                            tuple((who, *item(r, who, g)) for r, who, g in chosen if r == 2),
                            page + 1 if page + 2 < len(cuts) else 0)

    def require(self) -> GramEvaluator:
        if self.evaluator is None:
            raise PreconditionFailed(f"threshold job {self.relay.job_id} waits for its collective Gram keys")
        return self.evaluator

    @classmethod
    def restore(cls, relay: ThresholdRelay, store: Store) -> GramKeyRelay:
        """The relay after a coordinator restart: every stored message replayed and checked again as on arrival."""
        fresh = cls(relay)
        for round_, purpose in PURPOSES.items():
            signed: Mapping[str, bytes] = store.attestations(relay.job_id, purpose)
            for who, element, message in store.relayed(relay.job_id, f"gram-{round_}"):
                fresh.publish(who, round_, int(element), message, signed.get(who, b""))
        fresh.store = store
        return fresh
