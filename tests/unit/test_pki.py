"""The federation PKI (real keys, CSRs, certificates and CRLs in a temporary directory) and the call limiter."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedprompt.coordinator.limits import CallLimiter
from fedprompt.crypto.errors import PkiError
from fedprompt.crypto.pki import (
    CertificateAuthority,
    RevocationList,
    cert_info,
    load_cert,
    make_key_and_csr,
    new_key,
    parse_identity,
    write_key_and_csr,
)
from fedprompt.errors import RateLimited


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path / "ca")


def test_csr_flow_key_stays_at_site(tmp_path: Path, ca: CertificateAuthority) -> None:
    key_path, csr_path = write_key_and_csr("participant:hospital-a", tmp_path / "site")
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert b"PRIVATE KEY" not in csr_path.read_bytes()
    cert = ca.sign(csr_path.read_bytes())
    info = cert_info(cert)
    assert str(info.identity) == "participant:hospital-a" and info.identity.role == "participant"
    cert.verify_directly_issued_by(ca.cert)
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
    assert ca.issued()[-1]["identity"] == "participant:hospital-a"


def test_coordinator_certificate_carries_its_names(tmp_path: Path, ca: CertificateAuthority) -> None:
    _, cert_path = ca.issue("coordinator:main", tmp_path, ["coord.example.org", "10.0.0.5"])
    sans = load_cert(cert_path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["coord.example.org"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]


@pytest.mark.parametrize("identity, sans, message", [
    ("coordinator:main", [], "needs the DNS names"),
    ("model:gpu-host", [], "needs the DNS names"),
    ("participant:a", ["example.org"], "only server"),
    ("admin:alice", ["10.0.0.1"], "only server"),
    ("probe:k8s", ["fedprompt-coordinator"], "only server"),
])
def test_sign_refuses_wrong_names(ca: CertificateAuthority, identity: str, sans: list[str], message: str) -> None:
    _, csr = make_key_and_csr(identity, sans)
    with pytest.raises(PkiError, match=message):
        ca.sign(csr)


def test_probe_role_is_a_client_certificate_of_its_own(tmp_path: Path, ca: CertificateAuthority) -> None:
    """Health checks get the ``probe`` role: a client certificate (no SANs) that names no admin or participant."""
    _, cert_path = ca.issue("probe:k8s", tmp_path)
    assert cert_path.name == "probe-k8s.crt"
    cert = load_cert(cert_path)
    assert cert_info(cert).identity.role == "probe"
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]


@pytest.mark.parametrize("identity", ["hacker", "root:x", "participant:", "participant:a b", "admin:" + "x" * 101,
                                      "participant:-a"])
def test_bad_identities_refused(identity: str) -> None:
    with pytest.raises(PkiError, match="ROLE:NAME"):
        parse_identity(identity)


def test_sign_refuses_forged_and_foreign_requests(ca: CertificateAuthority) -> None:
    with pytest.raises(PkiError, match="not a PEM"):
        ca.sign(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
    key = new_key()
    odd = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "superuser")])).sign(key, hashes.SHA256()))
    with pytest.raises(PkiError, match="ROLE:NAME"):
        ca.sign(odd.public_bytes(serialization.Encoding.PEM))
    _, csr = make_key_and_csr("participant:a")
    with pytest.raises(PkiError, match="validity"):
        ca.sign(csr, days=10_000)


def test_init_refuses_to_overwrite(tmp_path: Path, ca: CertificateAuthority) -> None:
    with pytest.raises(PkiError, match="refusing to overwrite"):
        CertificateAuthority.init(ca.dir)


def test_revocation_list_reloads_and_checks_signature(tmp_path: Path, ca: CertificateAuthority) -> None:
    _, a = ca.issue("participant:a", tmp_path)
    _, b = ca.issue("participant:b", tmp_path)
    serial_a, serial_b = cert_info(load_cert(a)).serial, cert_info(load_cert(b)).serial
    crl = RevocationList(ca.crl_path, ca.cert)
    assert not crl.is_revoked(serial_a) and crl.refresh() == frozenset()
    assert ca.revoke([serial_a]) == [serial_a]
    assert crl.refresh() == {serial_a} and crl.is_revoked(serial_a) and not crl.is_revoked(serial_b)
    assert ca.revoke([serial_a]) == []  # idempotent
    with pytest.raises(PkiError, match="not issued by this CA"):
        ca.revoke([12345])
    other = CertificateAuthority.init(tmp_path / "other")
    ca.crl_path.write_bytes(other.crl_path.read_bytes())
    with pytest.raises(PkiError, match="federation"):
        crl.refresh()
    assert crl.is_revoked(serial_a)  # the last good list stays in force (and the coordinator refuses calls)
    ca.crl_path.write_bytes(b"garbage")
    with pytest.raises(PkiError, match="not a PEM CRL"):
        crl.refresh()


def test_call_limiter_token_bucket_and_uploads() -> None:
    now = [0.0]
    limiter = CallLimiter(rate=2.0, burst=3, max_uploads=1, max_uploads_total=64, clock=lambda: now[0])
    for _ in range(3):
        limiter.take("a")
    with pytest.raises(RateLimited):
        limiter.take("a")
    limiter.take("b")  # per identity
    now[0] += 0.5  # one token back at 2 per second
    limiter.take("a")
    with pytest.raises(RateLimited):
        limiter.take("a")
    with limiter.upload("a"):
        with pytest.raises(RateLimited, match="uploads in progress"):
            with limiter.upload("a"):
                pass
        with limiter.upload("b"):
            pass
    with limiter.upload("a"):
        pass


def test_call_limiter_caps_uploads_across_identities_and_frees_every_slot() -> None:
    """Each identity within its own slots can still meet the shared cap; a stream that ends in an error (the upload
    timeout, a refused header) gives both slots back, so nothing is held once the streams are gone."""
    limiter = CallLimiter(rate=100.0, burst=100, max_uploads=2, max_uploads_total=3)
    with limiter.upload("a"), limiter.upload("a"), limiter.upload("b"):
        assert (limiter.uploads_in_progress(), limiter.uploads_in_progress("a")) == (3, 2)
        with pytest.raises(RateLimited, match="receives 3 uploads \\(at most 3 at once\\)"):
            with limiter.upload("c"):
                pass
        with pytest.raises(RateLimited, match="already 2 uploads in progress"):  # its own cap is named first
            with limiter.upload("a"):
                pass
    assert limiter.uploads_in_progress() == 0
    with pytest.raises(TimeoutError):
        with limiter.upload("c"):
            assert limiter.uploads_in_progress("c") == 1
            raise TimeoutError
    assert (limiter.uploads_in_progress(), limiter.uploads_in_progress("c")) == (0, 0)
