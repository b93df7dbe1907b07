"""A job's key calls, as members make them: the single-key relay (``coordinator.keys``), the threshold key
setup (``coordinator.threshold.ThresholdRelay``) and the threshold decryption shares of a round attempt.

Kept apart from ``JobRuntime`` so the job's wiring stays thin; every method is one participant call, the
caller's identity first, and each is checked by the domain object it reaches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedprompt.coordinator.keys import JobKeys
from fedprompt.coordinator.threshold import PAGE_BYTES, ThresholdKeyRelay
from fedprompt.coordinator.threshold_gramjob import GramDecryption, GramThresholdKeyRelay, request_payload
from fedprompt.errors import NotSelected, PreconditionFailed
from fedprompt.protocol import GramKeyState, KeyState, Payload, ThresholdKeyState
from fedprompt.wire.threshold import ENCODING as THRESHOLD
from fedprompt.wire.threshold import ThresholdVersion, pack_version

if TYPE_CHECKING:
    from fedprompt.coordinator.runtime import JobRuntime


class KeyDoor:
    """The key calls of one job (``JobRuntime.relay``)."""

    def __init__(self, job: JobRuntime) -> None:
        self.job = job

    def _keys(self, participant_id: str) -> JobKeys:
        job = self.job
        job.roster.touch(participant_id, job.clock())
        if job.keys is None:
            raise PreconditionFailed(f"job {job.job_id} is not encrypted (he.enabled is false)")
        return job.keys

    def _threshold(self, participant_id: str) -> ThresholdKeyRelay:
        keys = self._keys(participant_id)
        if not isinstance(keys, ThresholdKeyRelay):
            raise PreconditionFailed(f"job {self.job.job_id} is not a threshold job (he.mode is 'single_key')")
        return keys

    # ---- single key -------------------------------------------------------------------------------
    def publish_context(self, participant_id: str, context: bytes, key_id: bytes, attestation: bytes = b"") -> None:
        self._keys(participant_id).publish(participant_id, context, key_id, attestation)

    def share_key(self, participant_id: str, recipient_id: str, sealed_key: bytes) -> None:
        self._keys(participant_id).share(participant_id, recipient_id, sealed_key)

    def key_state(self, participant_id: str) -> KeyState:
        return self._keys(participant_id).state_for(participant_id, lambda p: p in self.job.online())

    def has_members_to_seal_for(self, participant_id: str) -> bool:
        """Whether a single-key holder is to seal the job key for members now: its own task stays WAIT meanwhile,
        so a waiting long-poll returns at once for it (``coordinator.service``) rather than at its timeout
        (10 s of a daemon's default poll, once per member that joins after the dealer)."""
        keys = self.job.keys
        if keys is None or isinstance(keys, ThresholdKeyRelay):
            return False
        return next(keys.to_seal_for(participant_id, lambda p: p in self.job.online()), None) is not None

    # ---- threshold keys ---------------------------------------------------------------------------
    def threshold_keys(self, participant_id: str, crl: bytes = b"", page: int = 0,
                       page_bytes: int = PAGE_BYTES) -> ThresholdKeyState:
        """Page ``page`` of the key relay as ``participant_id`` sees it (``ThresholdRelay.state_for``)."""
        return self._threshold(participant_id).relay.state_for(participant_id, crl, page, page_bytes)

    def publish_share(self, participant_id: str, share: bytes, attestation: bytes = b"") -> None:
        self._threshold(participant_id).publish_share(participant_id, share, attestation)
        self.job.tick()

    def deal(self, participant_id: str, sealed: dict[str, bytes]) -> None:
        self._threshold(participant_id).deal(participant_id, sealed)
        self.job.tick()

    def _grams(self, participant_id: str) -> GramThresholdKeyRelay:
        keys = self._threshold(participant_id)
        if not isinstance(keys, GramThresholdKeyRelay):
            raise PreconditionFailed(f"job {self.job.job_id} has no Gram evaluation keys (its aggregator is not a "
                                     "Gram defence)")
        return keys

    def gram_keys(self, participant_id: str, page: int = 0, page_bytes: int = PAGE_BYTES) -> GramKeyState:
        """Page ``page`` of the Gram evaluation-key relay (``GramKeyRelay.state``), for members only."""
        keys = self._grams(participant_id)
        keys.relay.check_member(participant_id)
        return keys.grams.state(page, page_bytes)

    def publish_gram_key(self, participant_id: str, round_: int, element: int, message: bytes,
                         attestation: bytes) -> None:
        self._grams(participant_id).grams.publish(participant_id, round_, element, message, attestation)
        self.job.tick()

    # ---- threshold decryption ---------------------------------------------------------------------
    def decryption(self, participant_id: str, round_: int) -> Payload:
        """What a decryptor of round ``round_`` makes its share of: the round attempt, its uploaders and
        decryptors (a ``wire.threshold`` request: a share needs the attempt's seeds, not the sum)."""
        self._threshold(participant_id)
        d = self.job.rounds.decryption(round_)
        if participant_id not in d.decryptors:
            raise NotSelected(f"{participant_id} is not a decryptor of round {round_}")
        if isinstance(d, GramDecryption):
            return request_payload(self.job.job_id, d, participant_id)
        request = ThresholdVersion(d.round, d.attempt, d.uploaders, d.decryptors, d.declared_weight)
        return Payload(self.job.job_id, round_, THRESHOLD, self.job.vector_size, pack_version(request))

    def submit_share(self, participant_id: str, round_: int, attempt: int, masked: bytes) -> None:
        """A decryptor's masked share of round ``round_``'s attempt ``attempt``; with the last, the version (a Gram
        job's attempt: its Gram share, and with the last of those the sum's phase begins under a fresh deadline)."""
        self._threshold(participant_id)
        d = self.job.rounds.decryption(round_)
        if attempt != d.attempt:
            raise PreconditionFailed(f"round {round_} decrypts attempt {d.attempt}, not {attempt}")
        phase = d.phase if isinstance(d, GramDecryption) else ""
        d.submit(participant_id, masked)
        if isinstance(d, GramDecryption) and d.phase != phase and self.job.rounds.open is not None:
            self.job.rounds.renew_deadline(self.job.rounds.open)  # the sum's phase gets a deadline of its own
        self.job.tick()
