"""The crypto layer's typed errors.  ``fedprompt.crypto`` is the bottom layer and imports nothing of ours;
``fedprompt.wire.rpc``'s one error <-> status table maps these like every domain error."""

from __future__ import annotations


class CryptoError(Exception):
    """Base of every error the crypto layer raises on purpose."""


class ParameterError(CryptoError):
    """CKKS parameters out of range; the message names the config key (``he.scale_bits: ...``)."""


class InvalidCiphertext(CryptoError):
    """Encrypted or key material that cannot be used: malformed, truncated, made under another key, not
    parsing under the job's context, a context with a secret where a public one belongs, or a sealed blob
    that does not open."""


class InvalidValue(CryptoError):
    """A plain value the crypto layer refuses: NaN or out of the encryptable range, a sum past its term
    limit (or empty), a decryptor's Gram answer of the wrong shape."""


class PkiError(CryptoError):
    """A certificate, CSR, key or CRL is missing, malformed, wrongly signed or not allowed."""


class AttestationError(CryptoError):
    """Key material whose signed attestation is missing, malformed, for another job, key, member or purpose,
    replayed, or signed under a certificate the federation CA did not issue (or revoked)."""
