"""Admin-signed job configs: the member roster, t and HE parameters a member trusts come from its admin, not
from the coordinator that relays them.

A member learns its job's config from the coordinator (``DescribeJob``).  Unsigned, an actively malicious
coordinator could show a threshold job's member a roster of its choosing (certified colluding sites as t of
its co-members), or another t.  So the admin signs, at submission, the config exactly as members will be shown
it (``member_toml``: the allow-list kept only for threshold jobs, whose members deal to each other, and no
cohort list), with the private key of its mTLS certificate, as members sign their keys (``crypto.attest``,
purpose ``job-config``; the statement's job field is the job's name, since the coordinator assigns the id
after submission).  The coordinator stores the statement with the job and relays it; a member verifies it
against the federation CA and CRL, requiring an ``admin:`` certificate, before it uses anything in the
config (``check_job_config``).

Policy: a member with credentials (an mTLS federation) requires every job's config signed by an admin, not only
a threshold job's: a member learns the mode from the config itself, so accepting unsigned plaintext or
single-key configs would let the coordinator downgrade a threshold job's member to plaintext uploads, or to a
single key a colluding member deals.  Over mTLS every admin call carries an admin certificate, whose key the
admin client signs with (``app.admin_client``), so every job created over mTLS is signed; a job created by an
earlier release has no signature and must be created again.  A member without credentials (in-process
simulations, ``--insecure``) cannot verify and checks nothing, as for key attestations.
"""

from __future__ import annotations

import dataclasses

from fedprompt.config.codec import dump_toml, parse_toml
from fedprompt.config.job import JobConfig
from fedprompt.crypto.attest import Attestation, KeySigner, KeyTrust, digest
from fedprompt.crypto.errors import AttestationError
from fedprompt.errors import RelayRefused, clip

SIGNED_CONFIG = "job-config"


def _member_view(config: JobConfig) -> JobConfig:
    """The job as members see it: without the allow-list (no member learns who else may join) unless the job is
    a threshold job, whose members must know each other; without the cohort list."""
    listed = config.job.allowed_participants if config.he.threshold_mode else ()
    return dataclasses.replace(config, job=dataclasses.replace(config.job, allowed_participants=listed),
                               levels=dataclasses.replace(config.levels, cohorts=()))


def member_toml(config: JobConfig) -> str:
    """The exact text a member is shown, and so the text the admin signs."""
    return dump_toml(_member_view(config))


def sign_config(signer: KeySigner, config_toml: str) -> bytes:
    """The admin's signed statement of a job config it submits (read as the coordinator will read it)."""
    config = parse_toml(config_toml, JobConfig, "job config")
    return signer.sign(config.job.name, SIGNED_CONFIG, (digest(member_toml(config).encode()),))


def check_submitted(signature: bytes, config: JobConfig) -> None:
    """At submission (the coordinator): the statement is about this job's config as members will see it, so a
    mismatch is refused there, not at every member's join.  The signature itself is the members' to check."""
    att = Attestation.from_bytes(signature)
    att.check_claims(job_id=config.job.name, identity=att.identity, purpose=SIGNED_CONFIG,
                     digests=(digest(member_toml(config).encode()),))


def check_job_config(trust: KeyTrust | None, signature: bytes, config_toml: str, config: JobConfig,
                     crl: bytes = b"") -> str:
    """A member's check of a relayed config (``config`` parsed from ``config_toml``; ``crl``: the relayed CRL,
    taken if the CA signed it and it is newer): the signing admin's identity, or "" with no ``trust`` to check
    with.  ``RelayRefused`` naming why when the signature is missing, forged, by a non-admin or revoked
    certificate, or for another config.  Jobs may share a name, so a config statement supersedes no other: it is
    checked without ``trust``'s replay bookkeeping."""
    if trust is None:
        return ""
    if not signature:
        raise RelayRefused(f"the config of job {config.job.name[:60]!r} is not signed by an admin: its mode, member "
                           "list and t cannot be trusted (a job created by an earlier release: create it again)")
    try:
        trust.update_crl(crl)
        att = Attestation.from_bytes(signature)
        once = KeyTrust(trust.ca)
        once.crl = trust.crl
        once.verify(signature, job_id=config.job.name, identity=att.identity, purpose=SIGNED_CONFIG,
                    digests=(digest(config_toml.encode()),))
    except AttestationError as exc:
        raise RelayRefused(f"the config of job {config.job.name[:60]!r} is refused: {clip(str(exc), 300)}") from exc
    return att.identity
