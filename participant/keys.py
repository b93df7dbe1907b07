"""A participant's side of an encrypted job's keys: its X25519 exchange key, the job's CKKS secret context,
and relaying that context, sealed, to members that lack it.

The key dealer creates the job's keys at join and publishes only the key-less context (and, for a Gram
defence, the public evaluation keys).  Every key holder
the coordinator asks (the dealer while online, else any holder) seals the secret context for each listed
member with ``crypto.sealing``; the recipient checks the sealer's registered key, opens the blob, and checks
the key id against the one the dealer published.

The coordinator that relays all this is not trusted with it: with the site's mTLS credentials
(``crypto.attest.KeyCredentials``) every key this site publishes is signed with its certificate's key, and
every key it is handed is verified before use: a member's exchange key before anything is sealed to it, the
dealer's key id and context and the sealer's exchange key before a sealed key is accepted.  A key that does
not verify is refused (``AttestationError``), reported so the coordinator pauses the job with the reason, and
nothing is sealed to or accepted from it.  Without certificates (``--insecure``) there is nothing to sign
with or verify against: keys are used unattested, with a warning, as the rest of that mode is unverified.  The secret context and the exchange key are kept in the
site's state directory (``keys/<job_id>/``, owner-only files) so the site can decrypt its prompt later and a
restarted daemon rejoins as the same key holder; the secret never leaves the site unsealed.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from fedprompt.crypto.attest import KeyCredentials, digest
from fedprompt.crypto.ckks import CkksParams, SecretContext
from fedprompt.crypto.errors import AttestationError
from fedprompt.crypto.gram import EVALUATION_KEYS, evaluation_keys
from fedprompt.crypto.sealing import load_private, new_exchange_key, private_bytes, public_bytes, seal, unseal
from fedprompt.errors import DuplicateUpdate, FedPromptError, clip
from fedprompt.protocol import CoordinatorLink, KeyState, Payload, checked_job_id

log = structlog.get_logger("participant.keys")

#: The longest refusal reason a report carries (``wire.bounds`` allows 500 characters for ``reason``).
MAX_FAULT_BYTES = 400
SECRET_FILE = "secret.ckks"
EXCHANGE_FILE = "exchange.x25519"


def key_dir(state_dir: Path, job_id: str) -> Path:
    """Where a site keeps one job's keys: ``keys/<job_id>``, for a job id that is one safe file name only."""
    return state_dir / "keys" / checked_job_id(job_id, "job keys")


def write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


class KeyHolder:
    """Holds (or waits for) one job's CKKS key on behalf of one participant.

    With a state directory, the keys of a restarted daemon are the ones it had: its exchange key (so its
    re-join matches the key the coordinator registered) and, once it held it, the job's secret context.
    With ``credentials`` the keys are attested both ways; without (``--insecure``), they are not."""

    def __init__(self, link: CoordinatorLink, params: CkksParams, job_id: str, state_dir: Path | None = None,
                 credentials: KeyCredentials | None = None) -> None:
        self.link = link
        self.credentials = credentials
        self.params = params
        self.state_dir = state_dir
        self.job_id = job_id
        self.identity = ""
        self.secret: SecretContext | None = None
        stored = key_dir(state_dir, job_id) if state_dir is not None else None
        if stored is not None and (stored / EXCHANGE_FILE).exists():
            self.exchange = load_private((stored / EXCHANGE_FILE).read_bytes())
            if (stored / SECRET_FILE).exists():
                self.secret = SecretContext.from_secret_bytes((stored / SECRET_FILE).read_bytes(), params)
            log.info("job keys loaded from the state directory", job_id=job_id, holds_key=self.secret is not None)
        else:
            self.exchange = new_exchange_key()
            if stored is not None:
                write_private(stored / EXCHANGE_FILE, private_bytes(self.exchange))

        if credentials is None:
            log.warning("encrypted job keys are unattested: without certificates (--insecure) an actively "
                        "malicious coordinator could swap exchange keys and be sealed the job key", job_id=job_id)

    @property
    def public_key(self) -> bytes:
        return public_bytes(self.exchange)

    def attestation(self) -> bytes:
        """The signed statement that our exchange key is ours, sent with it at join (b"" without credentials)."""
        return self._sign("exchange", (digest(self.public_key),))

    def _sign(self, purpose: str, digests: tuple[bytes, ...]) -> bytes:
        return self.credentials.signer.sign(self.job_id, purpose, digests) if self.credentials is not None else b""

    def _verify(self, blob: bytes, identity: str, purpose: str, digests: tuple[bytes, ...]) -> None:
        if self.credentials is not None:
            self.credentials.trust.verify(blob, job_id=self.job_id, identity=identity, purpose=purpose,
                                          digests=digests)

    def joined(self, identity: str, deal: bool) -> None:
        """Remember who we are in the job; as the dealer, create the job's keys and publish the context."""
        self.identity = identity
        if deal:
            secret = SecretContext.create(self.params)
            self._keep(secret)  # kept before it is published: a crash after publishing must not lose it
            public = secret.public_bytes()
            self.link.publish_context(self.job_id, public, secret.key_id,
                                      self._sign("dealer", (secret.key_id, digest(public))))
            log.info("job keys created and public context published", job_id=self.job_id, **self.params.describe())
            if self.params.multiplicative:  # an encrypted Gram matrix: the coordinator needs evaluation keys
                self._upload_evaluation_keys(secret)

    def _upload_evaluation_keys(self, secret: SecretContext) -> None:
        self.link.upload(Payload(self.job_id, 0, EVALUATION_KEYS, 0, evaluation_keys(secret)))
        log.info("evaluation keys uploaded", job_id=self.job_id)

    def refresh(self) -> None:
        """One look at the relay: pick up our sealed key if it arrived; upload the evaluation keys if we dealt and
        the coordinator lacks them; share with whoever we are asked to."""
        state = self.link.keys(self.job_id)
        try:
            self._serve(state)
        except AttestationError as exc:
            reason = clip(str(exc), MAX_FAULT_BYTES)
            log.error("relayed key material refused: reporting it, nothing sealed to or accepted from it",
                      job_id=self.job_id, reason=reason)
            try:
                self.link.report_key_fault(self.job_id, reason)
            except FedPromptError as failed:  # the refusal stands, reported or not
                log.error("the refusal could not be reported", job_id=self.job_id, error=clip(str(failed), 300))
            raise

    def _serve(self, state: KeyState) -> None:
        if self.credentials is not None:
            self.credentials.trust.update_crl(state.crl)
        if self.secret is not None and state.key_id and state.key_id != self.secret.key_id:
            raise FedPromptError(f"the key kept for job {self.job_id} is not the key its dealer published")
        if self.secret is None and state.sealed_key:
            self._verify(state.dealer_attestation, state.dealer_id, "dealer",
                         (state.key_id, digest(state.public_context)))
            self._verify(state.sealer_attestation, state.sealer_id, "exchange", (digest(state.sealer_public_key),))
            opened = unseal(state.sealed_key, recipient=self.exchange, sender_public=state.sealer_public_key,
                            job_id=self.job_id, sender_id=state.sealer_id, recipient_id=self.identity)
            secret = SecretContext.from_secret_bytes(opened, self.params)
            if secret.key_id != state.key_id:
                raise FedPromptError(f"the key sealed by {state.sealer_id} is not the key the dealer published")
            self._keep(secret)
            log.info("job key received", job_id=self.job_id, sealer=state.sealer_id)
        if self.secret is None:
            return
        if state.owes_evaluation_keys:  # we dealt, and stopped before the evaluation keys reached the coordinator
            self._upload_evaluation_keys(self.secret)
        for recipient, recipient_key, attestation in state.needs_key:  # all checked before any is sealed to
            self._verify(attestation, recipient, "exchange", (digest(recipient_key),))
        for recipient, recipient_key, _ in state.needs_key:
            blob = seal(self.secret.secret_bytes(), sender=self.exchange, recipient_public=recipient_key,
                        job_id=self.job_id, sender_id=self.identity, recipient_id=recipient)
            try:
                self.link.share_key(self.job_id, recipient, blob)
                log.info("job key shared", job_id=self.job_id, recipient=recipient)
            except DuplicateUpdate:
                log.info("job key already shared by another holder", job_id=self.job_id, recipient=recipient)

    def require(self) -> SecretContext:
        """The job's secret context; the coordinator only gives work to holders, so it is here or on its way."""
        if self.secret is None:
            self.refresh()
        if self.secret is None:
            raise FedPromptError(f"no key for job {self.job_id} yet: no key holder has shared it")
        return self.secret

    def _keep(self, secret: SecretContext) -> None:
        self.secret = secret
        if self.state_dir is not None:
            write_private(key_dir(self.state_dir, self.job_id) / SECRET_FILE, secret.secret_bytes())
