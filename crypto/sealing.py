"""Sealing a job key for one recipient: X25519 + HKDF-SHA256 + AES-256-GCM (authenticated, sender-bound).

Each participant makes an X25519 key pair when it joins; the public half is registered with the coordinator.
A key holder seals the job's CKKS secret context for a recipient with both an ephemeral key and its own
registered key (``DH(e, R) || DH(S, R)``, as in the Noise "K" pattern), so only the recipient can open it and
the recipient knows which registered participant sealed it.  The job id, sender id and recipient id are the
AES-GCM associated data: a blob cannot be replayed into another job or to another participant.  The
coordinator relays blobs it cannot open.

A threshold job's members also share a *group key* the relay never sees (``group_key``: each member's random
contribution travels inside its sealed Shamir dealing), under which decryption shares travel, so only members
can combine them into the aggregate (``docs/he.md``, "Threshold CKKS: the round path").
"""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedprompt.crypto.errors import InvalidCiphertext

MAGIC = b"FPS1"
PUBLIC_KEY_BYTES = 32
_NONCE = 12
_INFO = b"fedprompt job-key seal v1"
GROUP_MAGIC = b"FPG1"
GROUP_CONTRIBUTION_BYTES = 32


def new_exchange_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def public_bytes(key: X25519PrivateKey) -> bytes:
    """The 32-byte public half, registered with the coordinator at join."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    """The raw private half, for the participant's own state directory only."""
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def load_private(data: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(data)


def _peer(data: bytes, what: str) -> X25519PublicKey:
    if len(data) != PUBLIC_KEY_BYTES:
        raise InvalidCiphertext(f"{what} must be a {PUBLIC_KEY_BYTES}-byte X25519 public key, got {len(data)} bytes")
    return X25519PublicKey.from_public_bytes(data)


def _aad(job_id: str, sender_id: str, recipient_id: str) -> bytes:
    return b"\0".join(part.encode() for part in ("fedprompt-seal-v1", job_id, sender_id, recipient_id))


def _key(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral + recipient, info=_INFO).derive(shared)


def seal(secret: bytes, *, sender: X25519PrivateKey, recipient_public: bytes, job_id: str, sender_id: str,
         recipient_id: str) -> bytes:
    """Encrypt ``secret`` so only ``recipient_id`` can open it and can tell ``sender_id`` sealed it."""
    recipient = _peer(recipient_public, "recipient key")
    ephemeral = X25519PrivateKey.generate()
    eph_public = public_bytes(ephemeral)
    shared = ephemeral.exchange(recipient) + sender.exchange(recipient)
    nonce = os.urandom(_NONCE)
    body = AESGCM(_key(shared, eph_public, recipient_public)).encrypt(nonce, secret,
                                                                      _aad(job_id, sender_id, recipient_id))
    return MAGIC + eph_public + nonce + body


def unseal(blob: bytes, *, recipient: X25519PrivateKey, sender_public: bytes, job_id: str, sender_id: str,
           recipient_id: str) -> bytes:
    """Open a sealed blob; ``InvalidCiphertext`` if it was tampered with, or not sealed by ``sender_id`` for us."""
    head = len(MAGIC) + PUBLIC_KEY_BYTES + _NONCE
    if len(blob) <= head + 16 or not blob.startswith(MAGIC):
        raise InvalidCiphertext("sealed key blob is malformed")
    eph_public = blob[len(MAGIC) : len(MAGIC) + PUBLIC_KEY_BYTES]
    nonce = blob[len(MAGIC) + PUBLIC_KEY_BYTES : head]
    sender = _peer(sender_public, "sender key")
    shared = recipient.exchange(_peer(eph_public, "ephemeral key")) + recipient.exchange(sender)
    try:
        return AESGCM(_key(shared, eph_public, public_bytes(recipient))).decrypt(
            nonce, blob[head:], _aad(job_id, sender_id, recipient_id))
    except InvalidTag as exc:
        raise InvalidCiphertext(f"sealed key from {sender_id} does not open: tampered, or not sealed for "
                                f"{recipient_id} in job {job_id}") from exc


def group_key(job_id: str, contributions: list[bytes]) -> bytes:
    """The members' shared key of a threshold job: SHA-256 over every member's 32 random bytes, each of which
    reached the others sealed (``seal``), in member order.  The relay sees none of them; any member knows it."""
    if any(len(c) != GROUP_CONTRIBUTION_BYTES for c in contributions):
        raise InvalidCiphertext(f"a group-key contribution must be {GROUP_CONTRIBUTION_BYTES} bytes")
    return hashlib.sha256(b"\0".join([b"fedprompt-group-key-v1", job_id.encode(), *contributions])).digest()


def seal_for_group(data: bytes, key: bytes, *aad: str) -> bytes:
    """AES-256-GCM under the members' ``group_key``, bound to ``aad`` (job, round, attempt, sender)."""
    nonce = os.urandom(_NONCE)
    return GROUP_MAGIC + nonce + AESGCM(key).encrypt(nonce, data, "\0".join(aad).encode())


def open_for_group(blob: bytes, key: bytes, *aad: str) -> bytes:
    """Open ``seal_for_group``'s blob; ``InvalidCiphertext`` if tampered with or bound to other labels."""
    head = len(GROUP_MAGIC) + _NONCE
    if len(blob) <= head + 16 or not blob.startswith(GROUP_MAGIC):
        raise InvalidCiphertext("group-sealed blob is malformed")
    try:
        return AESGCM(key).decrypt(blob[len(GROUP_MAGIC) : head], blob[head:], "\0".join(aad).encode())
    except InvalidTag as exc:
        raise InvalidCiphertext(f"group-sealed blob for {aad[-1][:60]!r} does not open: tampered, or made for "
                                "another job, round or sender") from exc
