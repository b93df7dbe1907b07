"""Key attestations: a participant's signed word that a public key of an encrypted job is its own.

The coordinator relays every key of an encrypted job (``coordinator.keys``), so without a signature an
actively malicious relay could list a member of its own making, swap a member's X25519 exchange key for its
own, or hand out a dealer's key id and context of its own making, and be sealed the job's secret key.  Each
participant therefore signs what it publishes with the private key of its own mTLS certificate (ECDSA P-256,
SHA-256, as ``crypto.pki`` issues), over a canonical transcript that binds a domain-separation tag, the job
id, its ``role:name`` identity, the purpose of the key (``exchange``, ``dealer`` or ``key-share``), an epoch (a
counter that only grows, so an older statement replayed after a newer one is refused) and the SHA-256 digests of
the keys.
The attestation carries the signer's certificate: only the federation CA can make one, so the relay can
neither forge nor alter a statement.  A recipient (``KeyTrust.verify``) checks the claims against what it
was about to use, the certificate's chain to the CA, its validity window, the CRL, and that the certificate
names the claimed identity; any failure is an ``AttestationError`` and the key is neither sealed to nor
accepted.  This is the key-confirmation step of authenticated key exchange (Krawczyk, "SIGMA", CRYPTO 2003):
sign the transcript with the long-term identity key, bind the identity into what is signed.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from fedprompt.crypto.errors import AttestationError, PkiError
from fedprompt.crypto.pki import CLOCK_SKEW, cert_from_pem, cert_info, cert_pem, crl_from_pem, load_cert, load_key

TAG = b"fedprompt-key-attestation-v1"
#: What a key is for: a member's X25519 exchange key, the dealer's key id and public context (single-key jobs),
#: a member's public share of a threshold job's collective key (``crypto.threshold``), its messages of the
#: collective Gram evaluation keys (one statement per round over every message's digest) or its upload to a
#: threshold Gram job (``crypto.threshold_gram``); and an admin's job config (``config.signed``), whose job field
#: is the job's name.
PURPOSES = ("exchange", "dealer", "key-share", "eval-key-round1", "eval-key-round2", "gram-upload", "job-config")
#: Who may sign for a purpose: participants their keys, admins job configs.
SIGNER_ROLE = {"job-config": "admin"}
MAX_ATTESTATION_BYTES = 8192


def digest(data: bytes) -> bytes:
    """SHA-256 of one key as it is attested."""
    return hashlib.sha256(data).digest()


@dataclass(frozen=True)
class Attestation:
    """One signed statement: ``identity`` vouches for the keys of ``digests`` in ``job_id`` for ``purpose``."""

    job_id: str
    identity: str
    purpose: str
    epoch: int
    digests: tuple[bytes, ...]
    signature: bytes
    certificate: bytes

    def transcript(self) -> bytes:
        """The canonical signed bytes: the tag, then each field length-prefixed, so no two statements collide."""
        parts = [self.job_id.encode(), self.identity.encode(), self.purpose.encode(), str(self.epoch).encode(),
                 *self.digests]
        return TAG + b"".join(struct.pack(">I", len(part)) + part for part in parts)

    def to_bytes(self) -> bytes:
        return json.dumps({"v": 1, "job_id": self.job_id, "identity": self.identity, "purpose": self.purpose,
                           "epoch": self.epoch, "digests": [d.hex() for d in self.digests],
                           "signature": base64.b64encode(self.signature).decode(),
                           "certificate": self.certificate.decode()}, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Attestation:
        """Parse a relayed attestation; anything malformed is an ``AttestationError``, never a crash."""
        if not data:
            raise AttestationError("no key attestation: the key is unsigned")
        if len(data) > MAX_ATTESTATION_BYTES:
            raise AttestationError(f"a key attestation is at most {MAX_ATTESTATION_BYTES} bytes, got {len(data)}")
        try:
            raw = json.loads(data)
            fields = (raw["job_id"], raw["identity"], raw["purpose"], raw["epoch"], raw["digests"],
                      raw["signature"], raw["certificate"])
            if raw["v"] != 1 or not all(isinstance(f, str) for f in (*fields[:3], *fields[5:])) \
                    or type(fields[3]) is not int or not isinstance(fields[4], list):
                raise TypeError("field types")
            return cls(fields[0], fields[1], fields[2], fields[3], tuple(bytes.fromhex(d) for d in fields[4]),
                       base64.b64decode(fields[5], validate=True), fields[6].encode())
        except (ValueError, TypeError, KeyError) as exc:
            raise AttestationError("the key attestation is malformed") from exc

    def check_claims(self, *, job_id: str, identity: str, purpose: str, digests: tuple[bytes, ...]) -> None:
        """The statement is about exactly these keys, of this member, in this job: no signature checked here
        (the coordinator, which holds no trust decision of the members, checks only this at upload)."""
        if self.job_id != job_id:
            raise AttestationError(f"the {purpose} key attestation of {identity} was signed for another job "
                                   f"({self.job_id[:60]!r}), not {job_id}")
        if self.purpose != purpose:
            raise AttestationError(f"a {self.purpose[:20]!r} attestation was relayed as a {purpose} key")
        if self.identity != identity:
            raise AttestationError(f"the {purpose} key relayed for {identity} is attested by "
                                   f"{self.identity[:60]!r}")
        if self.digests != digests:
            raise AttestationError(f"the {purpose} key relayed for {identity} is not the key it signed")


class KeySigner:
    """Signs this site's keys with the private key of its own mTLS certificate."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert, self.key = cert, key
        if self.cert.public_key() != self.key.public_key():
            raise PkiError("the private key does not belong to the certificate")
        self.identity = str(cert_info(self.cert).identity)
        self._epoch = 0

    def sign(self, job_id: str, purpose: str, digests: tuple[bytes, ...]) -> bytes:
        """An attestation of ``digests`` (``digest`` of each key) for ``purpose`` in ``job_id``; its epoch is
        the signing time in microseconds, forced to grow, so a later statement always supersedes an earlier."""
        if purpose not in PURPOSES:
            raise AttestationError(f"unknown key purpose {purpose!r}")
        self._epoch = max(self._epoch + 1, time.time_ns() // 1000)
        unsigned = Attestation(job_id, self.identity, purpose, self._epoch, digests, b"", cert_pem(self.cert))
        signature = self.key.sign(unsigned.transcript(), ec.ECDSA(hashes.SHA256()))
        return Attestation(job_id, self.identity, purpose, self._epoch, digests, signature,
                           unsigned.certificate).to_bytes()


class KeyTrust:
    """What a participant trusts: the federation CA, the newest CRL it has seen, and the newest statement of
    each signer it has accepted (so an older one relayed again is refused as a replay)."""

    def __init__(self, ca_cert: x509.Certificate) -> None:
        self.ca = ca_cert
        self.crl: x509.CertificateRevocationList | None = None
        self.newest: dict[tuple[str, str, str], tuple[int, tuple[bytes, ...]]] = {}

    def update_crl(self, pem: bytes) -> None:
        """Take a relayed CRL if the CA signed it and it is no older than the one held (a relay cannot forge a
        revocation list; it can only withhold a newer one, which the CRL's own next-update bounds)."""
        if not pem:
            return
        try:
            crl = crl_from_pem(pem, self.ca, "relayed revocation list")
        except PkiError as exc:
            raise AttestationError(f"the relayed revocation list was not signed by the federation CA: {exc}") from exc
        if self.crl is None or crl.last_update_utc >= self.crl.last_update_utc:
            self.crl = crl

    def verify(self, blob: bytes, *, job_id: str, identity: str, purpose: str,
               digests: tuple[bytes, ...]) -> Attestation:
        """The checked statement; ``AttestationError`` naming why, if it is not exactly this member's signed word
        for these keys in this job under a valid, unrevoked certificate of the federation CA."""
        att = Attestation.from_bytes(blob)
        att.check_claims(job_id=job_id, identity=identity, purpose=purpose, digests=digests)
        cert = self._certificate(att)
        try:
            public = cert.public_key()
            if not isinstance(public, ec.EllipticCurvePublicKey):
                raise InvalidSignature("not an EC key")
            public.verify(att.signature, att.transcript(), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature as exc:
            raise AttestationError(f"the {purpose} key attestation of {identity} does not verify: altered, or "
                                   "not signed with its certificate's key") from exc
        seen = self.newest.get((job_id, identity, purpose))
        if seen is not None and (att.epoch < seen[0] or att.epoch == seen[0] and att.digests != seen[1]):
            raise AttestationError(f"the {purpose} key attestation of {identity} is a replay: older than one "
                                   "already accepted")
        self.newest[(job_id, identity, purpose)] = (att.epoch, att.digests)
        return att

    def _certificate(self, att: Attestation) -> x509.Certificate:
        """The signer's certificate, checked: issued by the CA, in its validity window, not revoked, naming
        the identity claimed, of the role that may sign for the purpose (``SIGNER_ROLE``)."""
        try:
            cert = cert_from_pem(att.certificate, "attesting certificate")
            cert.verify_directly_issued_by(self.ca)
            info = cert_info(cert)
        except (PkiError, ValueError, TypeError, InvalidSignature) as exc:
            raise AttestationError(f"the certificate attesting {att.identity[:60]!r} was not issued by the "
                                   "federation CA") from exc
        now = dt.datetime.now(dt.UTC)
        if not cert.not_valid_before_utc - CLOCK_SKEW <= now <= cert.not_valid_after_utc + CLOCK_SKEW:
            raise AttestationError(f"the certificate attesting {att.identity[:60]!r} has expired or is not yet valid")
        if self.crl is not None and self.crl.get_revoked_certificate_by_serial_number(cert.serial_number):
            raise AttestationError(f"the certificate attesting {att.identity[:60]!r} is revoked "
                                   f"(serial {cert.serial_number:x})")
        if str(info.identity) != att.identity or info.identity.role != SIGNER_ROLE.get(att.purpose, "participant"):
            raise AttestationError(f"the certificate of {info.identity} cannot attest keys of {att.identity[:60]!r}")
        return cert


@dataclass(frozen=True)
class KeyCredentials:
    """A site's signer and its trust, from the files of its mTLS identity (``participant.ca_cert/cert/key``)."""

    signer: KeySigner
    trust: KeyTrust

    @classmethod
    def from_files(cls, ca_cert: Path, cert: Path, key: Path) -> KeyCredentials:
        return cls(KeySigner(load_cert(cert), load_key(key)), KeyTrust(load_cert(ca_cert)))
