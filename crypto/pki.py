"""The federation's public-key infrastructure: a CA, certificate signing requests, certificates, and a CRL.

Every party is known by the common name of its certificate, ``role:name`` with a role of ``ROLES``
(``coordinator``, ``participant``, ``admin``, ``model``, ``probe``; e.g. ``participant:hospital-a``).  Private keys are made where they are used
(``make_key_and_csr`` at the site) and only the CSR travels to the CA holder, who checks and signs it
(``CertificateAuthority.sign``).  Revocation is a signed CRL file (RFC 5280 §5) that the coordinator
re-reads whenever it changes (``RevocationList``), so a revoked certificate is refused without a restart.

Keys are ECDSA P-256 (fast, supported by gRPC's BoringSSL); signatures use SHA-256.  Pure functions over
files: no networking, no logging (serials and identities are returned to the caller, never key material).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedprompt.crypto.errors import PkiError

#: model: a query-only model service (black-box jobs); probe: a health checker (Kubernetes probes), which the
#: coordinator lets call its gRPC health service and no other.
ROLES = ("coordinator", "participant", "admin", "model", "probe")
#: Roles that run servers: their certificates name the addresses they are reached by and serve TLS.
SERVER_ROLES = ("coordinator", "model")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")
CA_KEY, CA_CERT, CRL, ISSUED = "ca.key", "ca.crt", "crl.pem", "issued.jsonl"
CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class Identity:
    """A parsed ``role:name`` certificate identity."""

    role: str
    name: str

    def __str__(self) -> str:
        return f"{self.role}:{self.name}"


def parse_identity(value: str) -> Identity:
    """``role:name`` with a known role and a name of 1-100 letters, digits and ``._@-``; else ``PkiError``."""
    role, sep, name = value.partition(":")
    if not sep or role not in ROLES or not _NAME.match(name):
        raise PkiError(f"identity {value[:60]!r} must be ROLE:NAME with ROLE one of {', '.join(ROLES)} and NAME of "
                       "letters, digits and ._@- (at most 100)")
    return Identity(role, name)


@dataclass(frozen=True)
class CertInfo:
    """What the coordinator needs from a verified peer certificate."""

    identity: Identity
    serial: int
    not_after: dt.datetime


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    """Write atomically (temp file + rename), so a reader never sees half a CRL; keys are mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
    return path


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise PkiError(f"cannot read {what} {path}: {exc.strerror}") from exc


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    return key_from_pem(_read(path, "private key"), str(path))


def key_from_pem(pem: bytes, where: str = "private key") -> ec.EllipticCurvePrivateKey:
    """An unencrypted PEM EC private key; anything else (binary data, an encrypted key) is a ``PkiError``."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:  # TypeError: the key is encrypted
        raise PkiError(f"{where} is not a PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{where}: only EC keys are used in this federation")
    return key


def load_cert(path: Path) -> x509.Certificate:
    return cert_from_pem(_read(path, "certificate"), str(path))


def cert_from_pem(pem: bytes, where: str = "certificate") -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise PkiError(f"{where} is not a PEM certificate") from exc


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def common_name(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(values) != 1:
        raise PkiError("a federation certificate names exactly one common name")
    return str(values[0].value)


def cert_info(cert: x509.Certificate) -> CertInfo:
    """Identity (from the subject CN), serial and expiry of a certificate."""
    return CertInfo(parse_identity(common_name(cert.subject)), cert.serial_number, cert.not_valid_after_utc)


def _sans(names: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            if not re.match(r"^[A-Za-z0-9*]([A-Za-z0-9.-]{0,252})$", name):
                raise PkiError(f"subject alternative name {name[:60]!r} is neither an IP address nor a DNS name") \
                    from None
            out.append(x509.DNSName(name))
    return out


def make_key_and_csr(identity: str, sans: list[str] | None = None) -> tuple[bytes, bytes]:
    """A fresh private key and a CSR for ``identity`` (PEM bytes each): run this where the key will live."""
    ident = parse_identity(identity)
    key = new_key()
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(ident))]))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(_sans(sans)), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return key_pem(key), csr.public_bytes(serialization.Encoding.PEM)


def write_key_and_csr(identity: str, out_dir: Path, sans: list[str] | None = None) -> tuple[Path, Path]:
    """``make_key_and_csr`` into ``out_dir/<role>-<name>.key`` (0600) and ``.csr``; returns both paths."""
    key, csr = make_key_and_csr(identity, sans)
    stem = str(parse_identity(identity)).replace(":", "-")
    return _write(Path(out_dir) / f"{stem}.key", key, private=True), _write(Path(out_dir) / f"{stem}.csr", csr)


class CertificateAuthority:
    """A federation CA kept in one directory: ``ca.key`` (0600), ``ca.crt``, ``crl.pem``, ``issued.jsonl``."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.key = load_key(self.dir / CA_KEY)
        self.cert = load_cert(self.dir / CA_CERT)

    @classmethod
    def init(cls, directory: Path, name: str = "fedprompt federation CA", days: int = 3650) -> CertificateAuthority:
        """Create a new CA (refusing to overwrite one) with an empty CRL."""
        directory = Path(directory)
        if (directory / CA_KEY).exists():
            raise PkiError(f"{directory / CA_KEY} exists: refusing to overwrite a CA")
        key = new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - CLOCK_SKEW)
                .not_valid_after(now + dt.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False, key_agreement=False,
                                             key_cert_sign=True, crl_sign=True, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        _write(directory / CA_KEY, key_pem(key), private=True)
        _write(directory / CA_CERT, cert_pem(cert))
        _write(directory / ISSUED, b"")
        ca = cls(directory)
        ca._write_crl([])
        return ca

    @property
    def ca_cert_path(self) -> Path:
        return self.dir / CA_CERT

    @property
    def crl_path(self) -> Path:
        return self.dir / CRL

    def sign(self, csr_pem: bytes, days: int = 365, not_before: dt.datetime | None = None) -> x509.Certificate:
        """Check a CSR (its signature, its ``role:name`` identity, SANs only for the coordinator) and sign it.

        ``not_before`` back-dates the validity window (tests make expired certificates with it).
        """
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise PkiError("not a PEM certificate signing request") from exc
        if not csr.is_signature_valid:
            raise PkiError("the CSR's signature does not verify: it was not made with the key it carries")
        if not isinstance(csr.public_key(), ec.EllipticCurvePublicKey):
            raise PkiError("only EC keys are used in this federation")
        ident = parse_identity(common_name(csr.subject))
        try:
            sans = list(csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            sans = []
        if ident.role in SERVER_ROLES and not sans:
            raise PkiError(f"a {ident.role} certificate needs the DNS names / IP addresses it is reached by (--san)")
        if ident.role not in SERVER_ROLES and sans:
            raise PkiError(f"only server ({', '.join(SERVER_ROLES)}) certificates carry subject alternative names, "
                           f"not {ident}")
        if not 1 <= days <= 3650:
            raise PkiError(f"validity of {days} days is outside [1, 3650]")
        start = not_before or _now() - CLOCK_SKEW
        usage = ExtendedKeyUsageOID.SERVER_AUTH if ident.role in SERVER_ROLES else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(self.cert.subject)
                   .public_key(csr.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                                key_encipherment=False, data_encipherment=False, key_agreement=False,
                                                key_cert_sign=False, crl_sign=False, encipher_only=False,
                                                decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                                  critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        with (self.dir / ISSUED).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"serial": f"{cert.serial_number:x}", "identity": str(ident),
                                 "not_after": cert.not_valid_after_utc.isoformat()}) + "\n")
        return cert

    def issue(self, identity: str, out_dir: Path, sans: list[str] | None = None, days: int = 365,
              not_before: dt.datetime | None = None) -> tuple[Path, Path]:
        """Key + certificate made on the CA host (the coordinator run by the admin, demos, tests).

        Institutions should prefer ``write_key_and_csr`` at their site + ``sign`` here, so their key never moves.
        """
        key, csr = make_key_and_csr(identity, sans)
        cert = self.sign(csr, days, not_before)
        stem = str(parse_identity(identity)).replace(":", "-")
        return (_write(Path(out_dir) / f"{stem}.key", key, private=True),
                _write(Path(out_dir) / f"{stem}.crt", cert_pem(cert)))

    def issued(self) -> list[dict[str, str]]:
        """Every certificate this CA signed: serial (hex), identity, not_after."""
        text = _read(self.dir / ISSUED, "issued list").decode("utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def revoked(self) -> set[int]:
        return {r.serial_number for r in self._load_crl()}

    def revoke(self, serials: list[int]) -> list[int]:
        """Add serials to the CRL and re-sign it (atomically); returns the serials newly revoked."""
        known = {int(row["serial"], 16) for row in self.issued()}
        unknown = [s for s in serials if s not in known]
        if unknown:
            raise PkiError(f"serial {unknown[0]:x} was not issued by this CA")
        current = self.revoked()
        added = [s for s in serials if s not in current]
        self._write_crl(sorted(current | set(added)))
        return added

    def serials_of(self, identity: str) -> list[int]:
        ident = str(parse_identity(identity))
        return [int(row["serial"], 16) for row in self.issued() if row["identity"] == ident]

    def _load_crl(self) -> x509.CertificateRevocationList:
        return load_crl(self.crl_path, self.cert)

    def _write_crl(self, serials: list[int]) -> None:
        now = _now()
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.cert.subject)
                   .last_update(now).next_update(now + dt.timedelta(days=3650)))
        for serial in serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build())
        crl = builder.sign(self.key, hashes.SHA256())
        _write(self.crl_path, crl.public_bytes(serialization.Encoding.PEM))


def load_crl(path: Path, ca_cert: x509.Certificate) -> x509.CertificateRevocationList:
    """Read a CRL and check it was signed by ``ca_cert``; anything else is a ``PkiError``."""
    return crl_from_pem(_read(path, "revocation list"), ca_cert, str(path))


def crl_from_pem(pem: bytes, ca_cert: x509.Certificate, where: str) -> x509.CertificateRevocationList:
    """A PEM CRL checked to be signed by ``ca_cert`` (a file, or one relayed to a participant); else ``PkiError``."""
    try:
        crl = x509.load_pem_x509_crl(pem)
    except ValueError as exc:
        raise PkiError(f"{where} is not a PEM CRL") from exc
    public = ca_cert.public_key()
    if crl.issuer != ca_cert.subject or not isinstance(public, ec.EllipticCurvePublicKey):
        raise PkiError(f"{where} was not issued by this federation's CA")
    try:
        valid = crl.is_signature_valid(public)
    except InvalidSignature:
        valid = False
    if not valid:
        raise PkiError(f"{where}: CRL signature does not verify against the federation CA")
    return crl


class RevocationList:
    """The revoked serials of a CRL file, re-read whenever the file changes (checked by ``refresh``)."""

    def __init__(self, path: Path, ca_cert: x509.Certificate) -> None:
        self.path = Path(path)
        self.ca_cert = ca_cert
        self.serials: frozenset[int] = frozenset()
        self.pem = b""  # the file as last loaded, relayed to participants (``crypto.attest.KeyTrust``)
        self._stamp: tuple[int, int, int] | None = None
        self.refresh()

    def refresh(self) -> frozenset[int]:
        """Reload if the file changed; returns the serials revoked since the last load (``PkiError`` if unusable)."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise PkiError(f"cannot read revocation list {self.path}: {exc.strerror}") from exc
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return frozenset()
        pem = _read(self.path, "revocation list")
        serials = frozenset(r.serial_number for r in crl_from_pem(pem, self.ca_cert, str(self.path)))
        added = serials - self.serials
        self.serials, self.pem, self._stamp = serials, pem, stamp
        return added

    def is_revoked(self, serial: int) -> bool:
        return serial in self.serials
