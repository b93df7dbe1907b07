"""One round attempt of a Gram-defended threshold job on the coordinator (``docs/he.md``, "The encrypted-Gram
defence under threshold keys", round path steps 3 to 5), as a domain object, driven by the job through
``coordinator.threshold_gramjob``.

1. Uploads are public-key encryptions under the collective key (``threshold_gram.encrypt``, norm-bounded), each
   with its uploader's attestation over the upload and its round attempt (``threshold_gram.upload_digests``,
   purpose ``gram-upload``), whose claims are checked here and whose signature every decryptor verifies.
2. :meth:`ThresholdGramRound.close` freezes the uploads, names t online decryptors (``pick_decryptors``) and
   computes the packed Gram ciphertext with the coordinator's collective keys (``GramKeyRelay``).
3. Each decryptor fetches the attested uploads (:meth:`ThresholdGramRound.request`), recomputes the Gram itself
   and returns a flooded share of it (``participant.threshold_gramkeys``): it never shares on a ciphertext the
   coordinator made, so the coordinator cannot have one upload decrypted in the Gram's place.
4. With the t shares the coordinator reads the scalars (``threshold_gram.combine``, which refuses shares of other
   uploads and garbage), divides entry ``(u, v)`` by ``n_u n_v`` as ``coordinator.hegram`` does, rejects every
   uploader whose diagonal broke the norm bound (``threshold_gram.over_bound``) and hands the rest to the very
   ``GramDefence.judge`` of the plaintext path.
5. :meth:`ThresholdGramRound.fold` sums the accepted uploads and adds their weights as a plaintext
   (``crypto.gram.add_weight``); t decryptors return masked shares of it and :meth:`ThresholdGramRound.download`
   adds them to its ``c0`` key-less (``threshold_masked.combine_sum``): a download only members can open.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tenseal.sealapi as seal

from fedprompt.coordinator.aggregation import GramDefence, RoundDecision
from fedprompt.coordinator.threshold import pick_decryptors
from fedprompt.coordinator.threshold_gramkeys import GramKeyRelay
from fedprompt.crypto import threshold_gram, threshold_masked
from fedprompt.crypto.attest import Attestation
from fedprompt.crypto.errors import AttestationError, InvalidCiphertext
from fedprompt.crypto.gram import add_weight, to_matrix
from fedprompt.errors import DuplicateUpdate, InvalidUpdate, NotSelected, PreconditionFailed

UPLOAD_PURPOSE = "gram-upload"


class ThresholdGramRound:
    """One round attempt: attested public-key uploads, their Gram, its t decryption shares, the verdict, the sum."""

    def __init__(self, grams: GramKeyRelay, round_: int, vector_size: int, norm_bound: float,
                 attempt: int = 0) -> None:
        self.grams, self.relay = grams, grams.relay
        self.round, self.attempt, self.vector_size, self.norm_bound = round_, attempt, vector_size, norm_bound
        self.evaluator = grams.require()
        self.uploads: dict[str, tuple[bytes, bytes, list[seal.Ciphertext]]] = {}
        self.weights: dict[str, float] = {}
        self.order: tuple[str, ...] = ()
        self.decryptors: tuple[str, ...] = ()
        self.payload = b""
        self.shares: dict[str, bytes] = {}

    def add(self, who: str, attempt: int, upload: bytes, weight: float, attestation: bytes) -> None:
        """One member's attested upload of this attempt, parsed under the collective key."""
        self.relay.check_member(who)
        if attempt != self.attempt or self.decryptors:
            raise PreconditionFailed(f"round {self.round} takes uploads of attempt {self.attempt} only, before its "
                                     "Gram matrix is computed")
        if who in self.uploads:
            raise DuplicateUpdate(f"{who} already uploaded to round {self.round} attempt {attempt}")
        try:
            if attestation:  # none in an unattested (--insecure) federation, whose members verify nothing
                Attestation.from_bytes(attestation).check_claims(
                    job_id=self.relay.job_id, identity=who, purpose=UPLOAD_PURPOSE,
                    digests=threshold_gram.upload_digests(upload, self.round, attempt))
            parsed = self.evaluator.context.parse(upload, self.relay.context.key_id, self.vector_size)
        except (AttestationError, InvalidCiphertext) as exc:
            raise InvalidUpdate(f"the Gram upload of {who} is refused: {exc}") from exc
        self.uploads[who] = (upload, attestation, parsed)
        self.weights[who] = float(weight)

    def close(self, online: Callable[[str], bool], avoid: Sequence[str] = ()) -> tuple[str, ...] | None:
        """Freeze the uploads, name t online decryptors (``avoid``, who missed the last attempt, asked last) and
        compute the packed Gram ciphertext; None while fewer than t members are online (or nobody uploaded)."""
        decryptors = pick_decryptors(self.relay.members, online, self.relay.params.t, self.round, avoid)
        if decryptors is None or not self.uploads:
            return None
        self.order, self.decryptors = tuple(sorted(self.uploads)), decryptors
        self.payload = self.evaluator.gram([self.uploads[who][2] for who in self.order])
        return decryptors

    def request(self, who: str) -> list[tuple[str, bytes, bytes]]:
        """What a decryptor recomputes the Gram of: (uploader, upload, attestation) in the Gram's order."""
        if who not in self.decryptors:
            raise NotSelected(f"{who} is not a decryptor of round {self.round} attempt {self.attempt}'s Gram matrix")
        return [(u, *self.uploads[u][:2]) for u in self.order]

    def submit(self, who: str, share: bytes) -> None:
        if who not in self.decryptors:
            raise NotSelected(f"{who} is not a decryptor of round {self.round} attempt {self.attempt}'s Gram matrix")
        if who in self.shares:
            raise DuplicateUpdate(f"{who} already sent its Gram decryption share of round {self.round}")
        try:
            threshold_gram.check_share(self.relay.context, self.payload, len(self.order), share, self.relay.index(who),
                                       [self.relay.index(m) for m in self.decryptors])
        except InvalidCiphertext as exc:
            raise InvalidUpdate(f"the Gram decryption share of {who} is refused: {exc}") from exc
        self.shares[who] = share

    @property
    def complete(self) -> bool:
        return bool(self.decryptors) and len(self.shares) == len(self.decryptors)

    def scalars(self) -> np.ndarray:
        """The Gram scalars of the weighted uploads in ``pairs`` order (``InvalidUpdate``: a wrong share)."""
        if not self.complete:
            raise PreconditionFailed(f"round {self.round}'s Gram matrix waits for its decryption shares")
        try:
            return threshold_gram.combine(self.relay.context, self.payload, len(self.order),
                                          [self.shares[m] for m in self.decryptors], self.norm_bound)
        except InvalidCiphertext as exc:
            raise InvalidUpdate(f"the Gram decryption of round {self.round} is refused: {exc}") from exc

    def judge(self, defence: GramDefence) -> tuple[RoundDecision, dict[str, float], tuple[str, ...]]:
        """The defence's verdict on the Gram matrix of the deltas, as in plaintext; an uploader whose squared norm
        broke the norm bound is rejected whatever the verdict, and named third (the flooding was sized on the
        bound: a new key is due before the next Gram decryption)."""
        scalars = self.scalars()
        n = len(self.order)
        breached = tuple(self.order[u] for u in threshold_gram.over_bound(self.relay.params, scalars, n,
                                                                          self.norm_bound))
        weights = np.array([self.weights[w] for w in self.order])
        verdict, metrics = defence.judge(self.order, to_matrix(scalars, n) / np.outer(weights, weights))
        if breached:
            verdict = dataclasses.replace(verdict, accepted=tuple(w for w in verdict.accepted if w not in breached),
                                          rejected=verdict.rejected + tuple(w for w in breached
                                                                            if w not in verdict.rejected))
        return verdict, metrics, breached

    def fold(self, accepted: Sequence[str]) -> bytes:
        """The encrypted sum of the accepted uploads with their total weight added in the weight slot."""
        if not accepted or any(who not in self.order for who in accepted):
            raise InvalidUpdate(f"round {self.round} folds uploads of its Gram matrix only, at least one")
        public = self.evaluator.context
        total = public.new_sum(self.vector_size)
        for who in accepted:
            total.add(self.uploads[who][2])
        if total.total is None:
            raise InvalidUpdate(f"round {self.round} has no accepted upload to sum")
        add_weight(public, total.total, self.vector_size, float(sum(self.weights[w] for w in accepted)))
        return total.to_bytes()

    def download(self, total: bytes, shares: Mapping[str, bytes]) -> bytes:
        """The accepted sum's download: its ``c0`` plus the decryptors' masked shares (by member), key-less
        (``threshold_masked.combine_sum``); only members, holding the group key, can open it."""
        if sorted(shares) != sorted(self.decryptors):
            raise PreconditionFailed(f"round {self.round}'s sum needs masked shares of {', '.join(self.decryptors)}")
        try:
            return threshold_masked.combine_sum(self.relay.context, total, self.vector_size,
                                                {self.relay.index(m): blob for m, blob in shares.items()})
        except InvalidCiphertext as exc:
            raise InvalidUpdate(f"a masked share of round {self.round}'s sum is refused: {exc}") from exc
