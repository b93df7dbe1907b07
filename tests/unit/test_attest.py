"""Key attestations (``crypto.attest``) with real certificates of a real federation CA: a statement verifies
only for the job, member, purpose and keys it was signed for, under a certificate of this CA that is not
revoked, and never after a newer statement of the same member."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from fedprompt.crypto.attest import Attestation, KeyCredentials, KeyTrust, digest
from fedprompt.crypto.errors import AttestationError
from fedprompt.crypto.pki import CertificateAuthority, load_cert

KEY = digest(b"x25519 public key of hospital a")


def _credentials(ca: CertificateAuthority, identity: str, where: Path, **issue: object) -> KeyCredentials:
    key, cert = ca.issue(identity, where, **issue)  # type: ignore[arg-type]
    return KeyCredentials.from_files(ca.ca_cert_path, cert, key)


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path / "ca")


@pytest.fixture
def site(ca: CertificateAuthority, tmp_path: Path) -> KeyCredentials:
    return _credentials(ca, "participant:hospital-a", tmp_path / "a")


def _trust(ca: CertificateAuthority) -> KeyTrust:
    return KeyTrust(load_cert(ca.ca_cert_path))


def test_a_signed_exchange_key_verifies_for_exactly_what_was_signed(ca: CertificateAuthority,
                                                                    site: KeyCredentials) -> None:
    blob = site.signer.sign("job-1", "exchange", (KEY,))
    att = _trust(ca).verify(blob, job_id="job-1", identity="participant:hospital-a", purpose="exchange",
                            digests=(KEY,))
    assert (att.job_id, att.identity, att.purpose, att.digests) == ("job-1", "participant:hospital-a", "exchange",
                                                                    (KEY,))


@pytest.mark.parametrize("claim, message", [
    ({"job_id": "job-2"}, "signed for another job"),
    ({"identity": "participant:hospital-b"}, "is attested by 'participant:hospital-a'"),
    ({"purpose": "dealer"}, "relayed as a dealer key"),
    ({"digests": (digest(b"the relay's own key"),)}, "is not the key it signed"),
])
def test_a_statement_used_for_anything_else_is_refused(ca: CertificateAuthority, site: KeyCredentials,
                                                       claim: dict[str, object], message: str) -> None:
    blob = site.signer.sign("job-1", "exchange", (KEY,))
    expected: dict[str, object] = {"job_id": "job-1", "identity": "participant:hospital-a", "purpose": "exchange",
                                   "digests": (KEY,)}
    with pytest.raises(AttestationError, match=message):
        _trust(ca).verify(blob, **{**expected, **claim})  # type: ignore[arg-type]


def test_a_tampered_digest_breaks_the_signature(ca: CertificateAuthority, site: KeyCredentials) -> None:
    raw = json.loads(site.signer.sign("job-1", "exchange", (KEY,)))
    forged = digest(b"the relay's own key")
    raw["digests"] = [forged.hex()]
    with pytest.raises(AttestationError, match="does not verify"):
        _trust(ca).verify(json.dumps(raw).encode(), job_id="job-1", identity="participant:hospital-a",
                          purpose="exchange", digests=(forged,))


def test_a_certificate_of_another_ca_is_refused(ca: CertificateAuthority, tmp_path: Path) -> None:
    other = CertificateAuthority.init(tmp_path / "other-ca")
    blob = _credentials(other, "participant:hospital-a", tmp_path / "o").signer.sign("job-1", "exchange", (KEY,))
    with pytest.raises(AttestationError, match="not issued by the federation CA"):
        _trust(ca).verify(blob, job_id="job-1", identity="participant:hospital-a", purpose="exchange",
                          digests=(KEY,))


def test_a_revoked_certificate_is_refused_once_the_crl_names_it(ca: CertificateAuthority, site: KeyCredentials) -> None:
    trust = _trust(ca)
    blob = site.signer.sign("job-1", "exchange", (KEY,))
    ca.revoke(ca.serials_of("participant:hospital-a"))
    trust.update_crl(ca.crl_path.read_bytes())
    with pytest.raises(AttestationError, match="is revoked"):
        trust.verify(blob, job_id="job-1", identity="participant:hospital-a", purpose="exchange", digests=(KEY,))


def test_a_crl_not_signed_by_the_ca_is_refused(ca: CertificateAuthority, tmp_path: Path) -> None:
    other = CertificateAuthority.init(tmp_path / "other-ca")
    with pytest.raises(AttestationError, match="not signed by the federation CA"):
        _trust(ca).update_crl(other.crl_path.read_bytes())


def test_an_expired_certificate_is_refused(ca: CertificateAuthority, tmp_path: Path) -> None:
    old = _credentials(ca, "participant:hospital-a", tmp_path / "old", days=1,
                       not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    with pytest.raises(AttestationError, match="expired"):
        _trust(ca).verify(old.signer.sign("job-1", "exchange", (KEY,)), job_id="job-1",
                          identity="participant:hospital-a", purpose="exchange", digests=(KEY,))


def test_only_a_participant_certificate_attests_keys(ca: CertificateAuthority, tmp_path: Path) -> None:
    admin = _credentials(ca, "admin:alice", tmp_path / "admin")
    with pytest.raises(AttestationError, match="cannot attest keys"):
        _trust(ca).verify(admin.signer.sign("job-1", "exchange", (KEY,)), job_id="job-1", identity="admin:alice",
                          purpose="exchange", digests=(KEY,))


def test_a_statement_under_someone_elses_certificate_is_refused(ca: CertificateAuthority, site: KeyCredentials,
                                                                tmp_path: Path) -> None:
    """The relay re-labels hospital b's signed key as hospital a's: the certificate names b, not a."""
    b = _credentials(ca, "participant:hospital-b", tmp_path / "b")
    raw = json.loads(b.signer.sign("job-1", "exchange", (KEY,)))
    raw["identity"] = "participant:hospital-a"
    with pytest.raises(AttestationError, match="participant:hospital-b cannot attest keys of"):
        _trust(ca).verify(json.dumps(raw).encode(), job_id="job-1", identity="participant:hospital-a",
                          purpose="exchange", digests=(KEY,))


def test_an_older_statement_relayed_after_a_newer_one_is_a_replay(ca: CertificateAuthority,
                                                                  site: KeyCredentials) -> None:
    trust = _trust(ca)
    old_key, new_key = digest(b"key before a restart"), digest(b"key after a restart")
    old = site.signer.sign("job-1", "exchange", (old_key,))
    new = site.signer.sign("job-1", "exchange", (new_key,))
    expected = {"job_id": "job-1", "identity": "participant:hospital-a", "purpose": "exchange"}
    trust.verify(new, digests=(new_key,), **expected)
    trust.verify(new, digests=(new_key,), **expected)  # the same statement again is not a replay
    with pytest.raises(AttestationError, match="is a replay"):
        trust.verify(old, digests=(old_key,), **expected)
    trust.verify(site.signer.sign("job-2", "exchange", (old_key,)), digests=(old_key,),
                 **{**expected, "job_id": "job-2"})  # each job on its own


@pytest.mark.parametrize("blob", [b"", b"not json", b"{}", json.dumps({"v": 1, "job_id": 3}).encode(),
                                  b"x" * 9000])
def test_malformed_attestations_are_refused_by_name(blob: bytes) -> None:
    with pytest.raises(AttestationError, match="unsigned|malformed|at most"):
        Attestation.from_bytes(blob)


def test_the_transcript_binds_every_field_unambiguously(site: KeyCredentials) -> None:
    """Length prefixes: moving a character from the job id into the identity changes the signed bytes."""
    a = Attestation("job-1", "participant:a", "exchange", 1, (KEY,), b"", b"")
    b = Attestation("job-", "1participant:a", "exchange", 1, (KEY,), b"", b"")
    assert a.transcript() != b.transcript()
