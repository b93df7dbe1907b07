"""The store's key-relay rows (``coordinator.store.Store`` inherits them): for single-key jobs the public
context, members' X25519 public keys, sealed keys and evaluation keys; for threshold jobs
(``coordinator.threshold``) every member's public key share and its sealed dealings; and every key's signed
attestation.  Nothing here opens anything: public keys, public shares and sealed blobs only."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager

from fedprompt.coordinator.sqlbackend import Row, Writer, upsert

_ATTESTATION = upsert("key_attestations", "job_id, participant_id, purpose, attestation",
                      "job_id, participant_id, purpose")
_RELAY = upsert("threshold_relay", "job_id, kind, owner, recipient, data", "job_id, kind, owner, recipient")


class KeyStore(ABC):
    """Key-relay rows over the store's transactions and reads."""

    @abstractmethod
    def _tx(self) -> AbstractContextManager[Writer]: ...

    @abstractmethod
    def _all(self, sql: str, args: tuple[object, ...] = ()) -> list[Row]: ...

    def save_he_context(self, job_id: str, dealer: str, key_id: bytes, public_context: bytes) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO he_contexts VALUES (?,?,?,?,?)", (job_id, dealer, key_id, public_context,
                                                                     time.time()))

    def save_exchange_key(self, job_id: str, participant_id: str, public_key: bytes) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO exchange_keys (job_id, participant_id, public_key, seq) VALUES (?,?,?, (SELECT "
                       "COALESCE(MAX(seq), 0) + 1 FROM exchange_keys WHERE job_id=?)) ON CONFLICT (job_id, "
                       "participant_id) DO UPDATE SET public_key=excluded.public_key",
                       (job_id, participant_id, public_key, job_id))

    def save_sealed_key(self, job_id: str, recipient: str, sender: str, blob: bytes) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO sealed_keys VALUES (?,?,?,?,?)", (job_id, recipient, sender, blob, time.time()))

    def save_evaluation_keys(self, job_id: str, keys: bytes) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO he_evaluation_keys VALUES (?,?,?)", (job_id, keys, time.time()))

    def save_attestation(self, job_id: str, participant_id: str, purpose: str, attestation: bytes) -> None:
        with self._tx() as db:
            db.execute(_ATTESTATION, (job_id, participant_id, purpose, attestation))

    def attestations(self, job_id: str, purpose: str) -> dict[str, bytes]:
        """The signed key statements of one purpose (``crypto.attest.PURPOSES``): participant -> attestation."""
        rows = self._all("SELECT participant_id, attestation FROM key_attestations WHERE job_id=? AND purpose=?",
                         (job_id, purpose))
        return {str(r[0]): bytes(r[1]) for r in rows}

    def he_context(self, job_id: str) -> tuple[str, bytes, bytes] | None:
        """The job's dealer, key id and public context, if the dealer published them."""
        rows = self._all("SELECT dealer, key_id, public_context FROM he_contexts WHERE job_id=?", (job_id,))
        return (str(rows[0][0]), bytes(rows[0][1]), bytes(rows[0][2])) if rows else None

    def exchange_keys(self, job_id: str) -> dict[str, bytes]:
        """Members' X25519 public keys, in the order they were first registered."""
        rows = self._all("SELECT participant_id, public_key FROM exchange_keys WHERE job_id=? ORDER BY seq, "
                         "participant_id", (job_id,))
        return {str(r[0]): bytes(r[1]) for r in rows}

    def sealed_keys(self, job_id: str) -> dict[str, tuple[str, bytes]]:
        """Relayed sealed keys: recipient -> (sender, blob)."""
        rows = self._all("SELECT recipient, sender, blob FROM sealed_keys WHERE job_id=?", (job_id,))
        return {str(r[0]): (str(r[1]), bytes(r[2])) for r in rows}

    def evaluation_keys(self, job_id: str) -> bytes | None:
        rows = self._all("SELECT keys FROM he_evaluation_keys WHERE job_id=?", (job_id,))
        return bytes(rows[0][0]) if rows else None

    def save_relayed(self, job_id: str, kind: str, owner: str, recipient: str, data: bytes) -> None:
        """A threshold job's relayed key material: ``kind`` "share" (``owner``'s public key share, no recipient)
        or "dealt" (``owner``'s sub-share sealed to ``recipient``)."""
        with self._tx() as db:
            db.execute(_RELAY, (job_id, kind, owner, recipient, data))

    def relayed(self, job_id: str, kind: str) -> list[tuple[str, str, bytes]]:
        """(owner, recipient, data) of one kind, in owner and recipient order."""
        rows = self._all("SELECT owner, recipient, data FROM threshold_relay WHERE job_id=? AND kind=? ORDER BY "
                         "owner, recipient", (job_id, kind))
        return [(str(r[0]), str(r[1]), bytes(r[2])) for r in rows]
