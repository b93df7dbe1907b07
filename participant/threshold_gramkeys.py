"""A member's part in a threshold job's collective Gram evaluation keys (``crypto.threshold_gram``; ``docs/he.md``,
"The encrypted-Gram defence under threshold keys", round path step 2), once its key share is ready.

1. It publishes its first round (RKG's first round and one RTG share per Galois element), one message at a time,
   each with its one attestation of the round (``crypto.attest``, purpose ``eval-key-round1``, the digests of
   every message of the round in element order).
2. Once every member's first round is relayed it verifies each attestation, sums the first rounds **itself**
   (round 2 on a relay-chosen sum would be an RLWE sample on a polynomial of the relay's choosing) and publishes
   its answer (``eval-key-round2``).
3. Once every second round is relayed it verifies them and assembles its **own** evaluator from the attested
   messages, never the coordinator's keys: relay-chosen keys could steer the ``c1`` it recomputes when it
   decrypts Gram scalars.

Restarts: RKG's ephemeral ``u_i`` is written (owner-only, ``keys/<job_id>/gram.ephemeral``) before the first
message leaves, each round's messages and attestation before they are published (a second, different answer
would be a second RLWE sample on one reference polynomial), and ``u_i`` is deleted once round 2 is stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import structlog

from fedprompt.crypto import threshold_gram, threshold_masked
from fedprompt.crypto.attest import digest
from fedprompt.crypto.ckks import PublicContext
from fedprompt.crypto.errors import InvalidValue
from fedprompt.crypto.gram import GramEvaluator, add_weight
from fedprompt.crypto.threshold_gram import EvaluationKeyParty
from fedprompt.crypto.threshold_seeded import UploadRound
from fedprompt.errors import FedPromptError, RelayRefused
from fedprompt.participant.keys import write_private
from fedprompt.participant.threshold_keys import GRAM_SPEND, WEIGHT_TOLERANCE, ThresholdKeys
from fedprompt.protocol import GramKeyLink, GramKeyState
from fedprompt.wire.threshold import unpack_version
from fedprompt.wire.threshold_gram import GRAM, GramRequest

log = structlog.get_logger("participant.threshold_gramkeys")

PURPOSES = {1: "eval-key-round1", 2: "eval-key-round2"}
UPLOAD_PURPOSE = "gram-upload"
EPHEMERAL = "gram.ephemeral"


class GramKeys:
    """One member's Gram evaluation-key setup of one threshold job (``keys``: its ready key material)."""

    def __init__(self, keys: ThresholdKeys) -> None:
        self.keys = keys
        self.elements = threshold_gram.round1_elements(keys.params)
        self.evaluator: GramEvaluator | None = None
        self._party: EvaluationKeyParty | None = None

    @property
    def job_id(self) -> str:
        return self.keys.job_id

    # -- persistence ----------------------------------------------------------------------------------------
    def _file(self, name: str) -> bytes:
        path = self.keys.dir / name if self.keys.dir is not None else None
        return path.read_bytes() if path is not None and path.exists() else b""

    def _save(self, name: str, data: bytes) -> None:
        if self.keys.dir is not None:
            write_private(self.keys.dir / name, data)

    def _sent(self, round_: int) -> tuple[list[bytes], bytes]:
        """This member's stored messages of a round (element order) and their attestation; empty if not made."""
        count = len(self.elements) if round_ == 1 else 1
        messages = [self._file(f"gram.round{round_}.{k}") for k in range(count)]
        return (messages, self._file(f"gram.round{round_}.att")) if all(messages) else ([], b"")

    def _store(self, round_: int, messages: Sequence[bytes]) -> tuple[list[bytes], bytes]:
        attestation = self.keys._sign(PURPOSES[round_], tuple(digest(m) for m in messages))
        for k, message in enumerate(messages):
            self._save(f"gram.round{round_}.{k}", message)
        self._save(f"gram.round{round_}.att", attestation)
        return list(messages), attestation

    def _relin(self) -> EvaluationKeyParty:
        if self._party is None:
            keys = self.keys
            stored = self._file(EPHEMERAL)
            self._party = EvaluationKeyParty(keys.context, keys.member, keys.seed, stored)
            if not stored:
                self._save(EPHEMERAL, self._party.ephemeral_bytes())
        return self._party

    # -- the rounds -----------------------------------------------------------------------------------------
    def _round1(self) -> tuple[list[bytes], bytes]:
        sent = self._sent(1)
        if sent[0]:
            return sent
        party = self._relin()
        return self._store(1, [party.relin_round1(), *(party.galois_share(g) for g in self.elements[1:])])

    def _verified(self, round_: int, state: GramKeyState) -> dict[int, dict[int, bytes]] | None:
        """Every member's messages of a round by member index and element, each attestation verified; None while
        one is missing.  ``AttestationError``: a message the relay swapped, dropped from an attested set or
        replayed."""
        rows = ([(who, g, msg, att) for who, g, msg, att in state.round1] if round_ == 1
                else [(who, 0, msg, att) for who, msg, att in state.round2])
        expected = self.elements if round_ == 1 else (0,)
        held: dict[str, dict[int, tuple[bytes, bytes]]] = {}
        for who, element, message, att in rows:
            if who in self.keys.members and element in expected:
                held.setdefault(who, {})[element] = (message, att)
        if sorted(held) != self.keys.members or any(len(parts) != len(expected) for parts in held.values()):
            return None
        out = {}
        for who, parts in held.items():
            for _, att in parts.values():
                if self.keys.credentials is not None:
                    self.keys.credentials.trust.verify(att, job_id=self.keys.job_id, identity=who,
                                                       purpose=PURPOSES[round_],
                                                       digests=tuple(digest(parts[g][0]) for g in expected))
            out[self.keys.members.index(who) + 1] = {g: parts[g][0] for g in expected}
        return out

    def refresh(self, link: GramKeyLink) -> bool:
        """One look at the Gram key relay: publish what is due, assemble the keys once all is in.  True when this
        member holds its own evaluator."""
        if self.evaluator is not None:
            return True
        if not self.keys.ready:
            raise FedPromptError(f"threshold job {self.keys.job_id}: the Gram keys follow the key setup")
        job_id, me = self.keys.job_id, self.keys.identity
        state = link.gram_keys(job_id)
        if sum(who == me for who, *_ in state.round1) < len(self.elements):
            messages, att = self._round1()
            for element, message in zip(self.elements, messages, strict=True):
                link.publish_gram_key(job_id, 1, element, message, att)
            state = link.gram_keys(job_id)
        first = self._verified(1, state)
        if first is None:
            return False
        if not any(who == me for who, *_ in state.round2):
            sent = self._sent(2)
            if not sent[0]:
                summed = threshold_gram.sum_round1(self.keys.context, {i: parts[0] for i, parts in first.items()})
                sent = self._store(2, [self._relin().round2(summed)])
                if self.keys.dir is not None:
                    (self.keys.dir / EPHEMERAL).unlink(missing_ok=True)
            link.publish_gram_key(job_id, 2, 0, sent[0][0], sent[1])
            state = link.gram_keys(job_id)
        second = self._verified(2, state)
        if second is None:
            return False
        context = self.keys.context
        keys = threshold_gram.assemble(context, self.keys.seed, first, {i: parts[0] for i, parts in second.items()})
        self.evaluator = GramEvaluator(PublicContext(context.public_bytes(), self.keys.params.ckks, context.key_id),
                                       keys)
        log.info("collective Gram evaluation keys assembled", job_id=job_id, member=self.keys.index)
        return True

    # -- rounds ---------------------------------------------------------------------------------------------
    @property
    def spent(self) -> int:
        """Ciphertext decryptions this member made shares of in this job's Gram rounds (its one-use records on
        disk): the ``Q`` its flooding is sized for counts them all, Gram matrices and sums."""
        return self.keys._gram_spent

    def encrypt(self, vector: np.ndarray, round_: int, attempt: int, norm_bound: float) -> tuple[bytes, bytes]:
        """Our upload to a Gram job's round attempt (``weight * delta``, at most ``norm_bound`` in l2) under the
        collective key, and our attestation of it over its round attempt."""
        upload = threshold_gram.encrypt(self.keys.context, vector, norm_bound)
        return upload, self.keys._sign(UPLOAD_PURPOSE, threshold_gram.upload_digests(upload, round_, attempt))

    def _attested(self, round_: int, attempt: int, uploads: Sequence[tuple[str, bytes, bytes]]) -> GramEvaluator:
        """Our evaluator, once every upload is checked to be a distinct member's (``job.min_participants`` of them
        at least, ``ThresholdKeys._check_uploaders``), attested by it for this round attempt (a coordinator's own
        ciphertext among them would read coordinates of an honest update off the scalars, or be decrypted as the
        sum)."""
        if self.evaluator is None:
            raise FedPromptError(f"threshold job {self.keys.job_id}: the Gram keys are not assembled yet")
        uploaders = [who for who, _, _ in uploads]
        self.keys._indices(uploaders)
        if len(set(uploaders)) != len(uploaders):
            raise InvalidValue(f"a Gram matrix of round {round_} names an uploader twice")
        self.keys._check_uploaders(round_, uploaders)  # the job's floor: no share for fewer than min_participants
        if self.keys.credentials is not None:
            for who, upload, att in uploads:
                self.keys.credentials.trust.verify(att, job_id=self.keys.job_id, identity=who, purpose=UPLOAD_PURPOSE,
                                                   digests=threshold_gram.upload_digests(upload, round_, attempt))
        return self.evaluator

    def decryption_share(self, round_: int, attempt: int, uploads: Sequence[tuple[str, bytes, bytes]],
                         vector_size: int, decryptors: Sequence[str], norm_bound: float) -> bytes:
        """Our flooded share of the Gram matrix of ``uploads`` ((uploader, upload, attestation) in the Gram's
        order), recomputed here with our own keys from the attested uploads, once per round attempt."""
        evaluator, key = self._attested(round_, attempt, uploads), self.keys._require()
        spend, ciphertexts = (f"{GRAM_SPEND}share:{round_}:{attempt}",
                              -(-len(threshold_gram.pairs(len(uploads))) // self.keys.params.poly_modulus_degree))
        self.keys._check_budget(spend, ciphertexts)  # a matrix is bound to no uploader set (``_check_retry``)
        self.keys._record_spend(spend, ciphertexts)
        return threshold_gram.decryption_share(self.keys.context, key, evaluator, [u for _, u, _ in uploads],
                                               vector_size, self.keys._indices(decryptors), norm_bound)

    def sum_share(self, round_: int, attempt: int, uploads: Sequence[tuple[str, bytes, bytes]],
                  accepted: Mapping[str, float], vector_size: int, decryptors: Sequence[str]) -> bytes:
        """Our flooded share of the round attempt's accepted sum, masked under the group key
        (``threshold_masked.masked_sum_share``), once per round attempt, and of one accepted set per round: a
        later attempt's other set is refused (``ThresholdKeys._claim``, the plain rounds' checks and records,
        kept on disk).  The accepted set must hold ``job.min_participants`` distinct members as the uploads do
        (``ThresholdKeys._check_uploaders``): the coordinator's verdict, which we cannot check, could otherwise
        name one honest upload beside its colluders' and have it decrypted less their own.  The sum is recomputed here from the attested ``uploads`` the coordinator accepted
        (uploader -> example count, added as a plaintext as the coordinator does), so only a sum of this round
        attempt's uploads is ever decrypted, never a ciphertext of the coordinator's making; SEAL's additions are
        exact, so it is the coordinator's fold and the t masked shares combine on it
        (``threshold_masked.combine_sum``) into a download only members open."""
        public, key = self._attested(round_, attempt, uploads).context, self.keys._require()
        held = {who: upload for who, upload, _ in uploads}
        if not accepted or not set(accepted) <= set(held):
            raise RelayRefused(f"the accepted uploads of round {round_} must be some of its attested uploads: "
                               "no decryption share made")
        total = public.new_sum(vector_size)
        for who in accepted:
            total.add(public.parse(held[who], self.keys.context.key_id, vector_size))
        if total.total is None:
            raise InvalidValue(f"round {round_} has no accepted upload to sum")
        add_weight(public, total.total, vector_size, float(sum(accepted.values())))
        self.keys._claim(round_, list(accepted), "accepted uploader", f"{GRAM_SPEND}sum:{round_}:{attempt}",
                         self.keys.params.ckks.num_ciphertexts(vector_size))
        return threshold_masked.masked_sum_share(self.keys.context, key, self.keys.group, total.to_bytes(),
                                                 vector_size, UploadRound(self.keys.seed, round_, attempt),
                                                 self.keys._indices(decryptors))

    def open_sum(self, round_: int, attempt: int, combined: bytes, vector_size: int, decryptors: Sequence[str]
                 ) -> tuple[np.ndarray, float]:
        """(sum, weight) of a round attempt's combined download (``threshold_masked.combine_sum``)."""
        return threshold_masked.open_combined_sum(self.keys.context, combined, vector_size, self.keys.group,
                                                  UploadRound(self.keys.seed, round_, attempt),
                                                  self.keys._indices(decryptors))

    def answer(self, request: GramRequest, vector_size: int, norm_bound: float) -> bytes:
        """Our share for a decryption request of a Gram round attempt (``fedprompt.wire.threshold_gram``): of its
        Gram matrix, or of its accepted sum."""
        if request.phase == GRAM:
            return self.decryption_share(request.round, request.attempt, request.uploads, vector_size,
                                         request.decryptors, norm_bound)
        return self.sum_share(request.round, request.attempt, request.uploads, request.accepted, vector_size,
                              request.decryptors)

    def open_version(self, data: bytes, vector_size: int) -> tuple[np.ndarray, float]:
        """(sum, weight) of a stored version of a Gram job (``fedprompt.wire.threshold``, its combined part the
        accepted sum's download); the weight slot must equal the accepted uploaders' declared weights."""
        v = unpack_version(data)
        self.keys._indices(v.uploaders)
        vector, weight = self.open_sum(v.round, v.attempt, v.combined, vector_size, v.decryptors)
        if abs(weight - v.declared_weight) > WEIGHT_TOLERANCE:
            raise InvalidValue(f"the accepted sum of round {v.round} weighs {weight:.4f}, not the "
                               f"{v.declared_weight:.4f} its accepted uploaders declared: a wrong sum or a forged share")
        return vector, weight
