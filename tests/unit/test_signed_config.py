"""Admin-signed job configs (``config.signed``) with real certificates of a real federation CA: a member trusts a
relayed config only as an admin signed it, so a coordinator cannot show it a roster, t or HE parameters of its
own; the coordinator refuses at submission a statement about another config."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fedprompt.config import (
    JobConfig,
    check_job_config,
    check_submitted,
    dump_toml,
    member_toml,
    parse_toml,
    sign_config,
)
from fedprompt.config.privacy import HESection
from fedprompt.crypto.attest import Attestation, KeyCredentials, KeyTrust
from fedprompt.crypto.errors import AttestationError
from fedprompt.crypto.pki import CertificateAuthority, load_cert
from fedprompt.errors import RelayRefused

MEMBERS = ("participant:a", "participant:b", "participant:c")
COLLUDERS = ("participant:a", "participant:x", "participant:y")


def _config(mode: str = "threshold", members: tuple[str, ...] = MEMBERS) -> JobConfig:
    config = JobConfig()
    return dataclasses.replace(config, job=dataclasses.replace(config.job, name="trial", allowed_participants=members),
                               he=HESection(enabled=mode != "plain", mode="single_key" if mode == "plain" else mode))


def _credentials(ca: CertificateAuthority, identity: str, where: Path) -> KeyCredentials:
    key, cert = ca.issue(identity, where)
    return KeyCredentials.from_files(ca.ca_cert_path, cert, key)


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path / "ca")


@pytest.fixture
def admin(ca: CertificateAuthority, tmp_path: Path) -> KeyCredentials:
    return _credentials(ca, "admin:alice", tmp_path / "alice")


def _trust(ca: CertificateAuthority) -> KeyTrust:
    return KeyTrust(load_cert(ca.ca_cert_path))


def _relayed(config: JobConfig) -> tuple[str, JobConfig]:
    """What a member is shown of ``config`` and parses from it, as ``DescribeJob`` relays it."""
    text = member_toml(config)
    return text, parse_toml(text, JobConfig)


def test_a_config_its_admin_signed_is_accepted_as_the_admins(ca: CertificateAuthority, admin: KeyCredentials) -> None:
    config = _config()
    signature = sign_config(admin.signer, dump_toml(config))
    check_submitted(signature, parse_toml(dump_toml(config), JobConfig))
    text, shown = _relayed(config)
    assert shown.job.allowed_participants == MEMBERS  # a threshold job's members see each other
    assert check_job_config(_trust(ca), signature, text, shown) == "admin:alice"


def test_a_roster_or_t_altered_by_the_coordinator_is_refused(ca: CertificateAuthority, admin: KeyCredentials) -> None:
    """The coordinator keeps the admin's signature but shows the member colluders as co-members, or another t."""
    signature = sign_config(admin.signer, dump_toml(_config()))
    for altered in (_config(members=COLLUDERS), dataclasses.replace(_config(), he=HESection(
            enabled=True, mode="threshold", threshold=3))):
        text, shown = _relayed(altered)
        with pytest.raises(RelayRefused, match="not the key it signed"):
            check_job_config(_trust(ca), signature, text, shown)
        with pytest.raises(AttestationError, match="not the key it signed"):  # and refused at submission
            check_submitted(signature, altered)


def test_a_forged_signature_is_refused(ca: CertificateAuthority, admin: KeyCredentials, tmp_path: Path) -> None:
    """Bytes of the signature flipped; a statement of another CA's admin; one by a participant's certificate."""
    config = _config()
    text, shown = _relayed(config)
    genuine = Attestation.from_bytes(sign_config(admin.signer, dump_toml(config)))
    flipped = dataclasses.replace(genuine, signature=genuine.signature[:-1] + bytes([genuine.signature[-1] ^ 1]))
    foreign = _credentials(CertificateAuthority.init(tmp_path / "other-ca"), "admin:alice", tmp_path / "mallory")
    member = _credentials(ca, "participant:a", tmp_path / "a")
    for forged, why in ((flipped.to_bytes(), "does not verify"),
                        (sign_config(foreign.signer, dump_toml(config)), "not issued by the federation CA"),
                        (sign_config(member.signer, dump_toml(config)), "cannot attest")):
        with pytest.raises(RelayRefused, match=why):
            check_job_config(_trust(ca), forged, text, shown)


def test_a_revoked_admins_signature_is_refused_by_the_crl_relayed_with_the_config(
        ca: CertificateAuthority, admin: KeyCredentials, tmp_path: Path) -> None:
    """The CRL comes with the job description; one the CA did not sign is refused, not taken."""
    signature = sign_config(admin.signer, dump_toml(_config()))
    ca.revoke(ca.serials_of("admin:alice"))
    with pytest.raises(RelayRefused, match="is revoked"):
        check_job_config(_trust(ca), signature, *_relayed(_config()), ca.crl_path.read_bytes())
    forged = CertificateAuthority.init(tmp_path / "other-ca").crl_path.read_bytes()
    with pytest.raises(RelayRefused, match="not signed by the federation CA"):
        check_job_config(_trust(ca), signature, *_relayed(_config()), forged)


def test_jobs_sharing_a_name_are_each_accepted_in_any_order(ca: CertificateAuthority, admin: KeyCredentials) -> None:
    """A config statement supersedes no other: an older job's config of the same name still verifies after a
    newer one (key statements, by contrast, are refused as replays)."""
    older, newer = _config(), _config(members=COLLUDERS)
    signatures = [sign_config(admin.signer, dump_toml(config)) for config in (older, newer)]
    trust = _trust(ca)
    assert check_job_config(trust, signatures[1], *_relayed(newer)) == "admin:alice"
    assert check_job_config(trust, signatures[0], *_relayed(older)) == "admin:alice"


def test_a_statement_of_another_job_is_refused(ca: CertificateAuthority, admin: KeyCredentials) -> None:
    other = dataclasses.replace(_config(), job=dataclasses.replace(_config().job, name="another"))
    signature = sign_config(admin.signer, dump_toml(other))
    with pytest.raises(RelayRefused, match="signed for another job"):
        check_job_config(_trust(ca), signature, *_relayed(_config()))


def test_an_unsigned_config_is_refused_whatever_mode_it_claims(ca: CertificateAuthority) -> None:
    """A coordinator that strips the signature cannot downgrade a threshold job's member to a single key or to
    plaintext uploads by showing it an unsigned config of that mode."""
    for mode in ("threshold", "single_key", "plain"):
        with pytest.raises(RelayRefused, match="not signed by an admin"):
            check_job_config(_trust(ca), b"", *_relayed(_config(mode)))
    assert check_job_config(None, b"", *_relayed(_config())) == ""  # no credentials: nothing to check with


def test_the_signed_text_hides_the_allow_list_of_a_job_that_is_not_threshold(admin: KeyCredentials,
                                                                          ca: CertificateAuthority) -> None:
    """A single-key job's members are not shown who else may join; what they are shown is what was signed."""
    config = _config("single_key")
    text, shown = _relayed(config)
    assert shown.job.allowed_participants == ()
    assert check_job_config(_trust(ca), sign_config(admin.signer, dump_toml(config)), text, shown) == "admin:alice"
