"""The attacks of ``fedprompt bench threshold``: a coalition against one honest member's update, members dropped
after uploading, and a relay that substitutes a member's signed keys.

Coalition (issue 30): the coordinator's full state (every upload it folded) plus the secret material of
``k`` sites.  Under today's single key any one site holds the key, so the coordinator and that site decrypt
every upload.  Under threshold keys, ``k = t - 1`` sites hold ``t - 1`` Shamir sub-shares of the honest
member's secret ``s_h`` and ``t - 1`` shares of the collective secret, which say nothing of either (Shamir,
CACM 1979); the attacks below decrypt the honest upload ``c0_h + a_r s_h`` with every key guess that material
yields and report the Pearson correlation of the result with the true update.  The same attack with ``t``
sites is the control: it rebuilds ``s_h`` and recovers the update, so a low correlation is the threshold's
doing and not a broken harness.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedprompt.crypto import sealing, shamir, threshold_seeded
from fedprompt.crypto.attest import KeyCredentials, KeyTrust, digest
from fedprompt.crypto.ckks import CkksParams, PublicContext, SecretContext
from fedprompt.crypto.errors import AttestationError
from fedprompt.crypto.pki import CertificateAuthority, load_cert
from fedprompt.crypto.rns import Poly
from fedprompt.crypto.threshold_costs import Keyed


def correlation(recovered: np.ndarray, truth: np.ndarray) -> float:
    """Pearson correlation of what an attack recovered with the true update (0.0 for a constant guess)."""
    if not np.all(np.isfinite(recovered)) or np.std(recovered) == 0:
        return 0.0
    return float(np.corrcoef(recovered, truth)[0, 1])


def decrypt_with(keyed: Keyed, upload: bytes, vector_size: int, key: Poly) -> np.ndarray:
    """The reals of a seeded upload ``(c0, a_r)`` decrypted as ``c0 + a_r * key``, whatever ``key`` is."""
    context, ring = keyed.context, keyed.context.ring
    plains = []
    for ct in context.parse(upload, context.key_id, vector_size):
        c0, a = ring.read_ciphertext(ct)
        plains.append(ring.plaintext((c0 + a * key[:1]) % ring.q(1), list(ct.parms_id()), ct.scale))
    return context.decode(plains)[:vector_size]


def key_guesses(keyed: Keyed, honest: int, coalition: Sequence[int]) -> dict[str, Poly]:
    """Every key the sites of ``coalition`` can form from their shares: their sub-shares of the honest secret and
    their shares of the collective secret, summed and Lagrange-interpolated at 0 as if they were enough."""
    ring, limbs = keyed.context.ring, len(keyed.context.ring.moduli)
    q = ring.q(limbs)
    everyone = range(1, keyed.params.members + 1)
    material = {"sub-shares of the honest secret": {i: keyed.keys[i].share_of([honest]) for i in coalition},
                "shares of the collective secret": {i: keyed.keys[i].share_of(everyone) for i in coalition}}
    guesses = {}
    for what, shares in material.items():
        guesses[f"sum of the {what}"] = sum(shares.values(), np.zeros((limbs, ring.n), dtype=object)) % q
        guesses[f"Lagrange interpolation of the {what}"] = sum(
            (shamir.lagrange(ring, list(coalition), i, limbs) * share for i, share in shares.items()),
            np.zeros((limbs, ring.n), dtype=object)) % q
    return guesses


def threshold_attack(keyed: Keyed, upload: bytes, vector_size: int, honest: int, coalition: Sequence[int],
                     update: np.ndarray) -> dict[str, float]:
    """Correlation with ``update`` (member ``honest``'s, encrypted as ``upload``) of the honest upload decrypted
    under each key guess of ``coalition`` (:func:`key_guesses`)."""
    return {name: correlation(decrypt_with(keyed, upload, vector_size, key), update)
            for name, key in key_guesses(keyed, honest, coalition).items()}


def single_key_attack(vector_size: int, seed: int = 0) -> float:
    """Correlation with the honest update of what the coordinator (the honest upload) and one site (the job key,
    as the dealer sealed it to that site) decrypt under today's single-key scheme."""
    params = CkksParams()
    dealer, site = sealing.new_exchange_key(), sealing.new_exchange_key()
    job = SecretContext.create(params)
    ids = {"job_id": "bench-threshold", "sender_id": "participant:dealer", "recipient_id": "participant:site"}
    sealed = sealing.seal(job.secret_bytes(), sender=dealer, recipient_public=sealing.public_bytes(site), **ids)
    site_key = SecretContext.from_secret_bytes(
        sealing.unseal(sealed, recipient=site, sender_public=sealing.public_bytes(dealer), **ids), params)
    update = np.random.default_rng(seed).normal(0, 0.1, vector_size)
    upload = job.encrypt(update * 7, 7.0)  # the honest member's, as the coordinator received it
    return correlation(site_key.decrypt_reals(upload, vector_size)[:vector_size], update)


def collusion_and_dropout(keyed: Keyed, vector_size: int, round: int, seed: int = 0) -> dict[str, Any]:
    """One round at ``keyed``'s n: every member uploads, the last ``n - t`` drop after uploading, the first t
    decrypt the sum; the coalition of sites 1..t-1 (and the coordinator) attacks member n's upload.

    Returns ``dropout`` (dropped, completed: the sum decrypted with its exact weight within 1e-4), the attacks'
    correlations with ``t - 1`` and (control) ``t`` sites, and ``aggregate_floor``: the correlation with the honest
    update of the decrypted sum minus the coalition's own updates, what any secure aggregation reveals."""
    params, context = keyed.params, keyed.context
    n, t = params.members, params.t
    upload_round = threshold_seeded.UploadRound(keyed.job_seed, round)
    rng = np.random.default_rng(seed)
    public = PublicContext(context.public_bytes(), params.ckks, context.key_id)
    total, updates, weights, uploads = public.new_sum(vector_size), {}, {}, {}
    for member in keyed.members:
        updates[member.index], weights[member.index] = rng.normal(0, 0.1, vector_size), float(rng.integers(1, 21))
        uploads[member.index] = threshold_seeded.encrypt(context, member, updates[member.index] * weights[member.index],
                                                         weights[member.index], upload_round)
        total.add(total.parse(uploads[member.index]))
    everyone, decryptors = sorted(uploads), list(range(1, t + 1))  # members t+1..n dropped after uploading
    summed = total.to_bytes()
    shares = [threshold_seeded.decryption_share(context, keyed.keys[j], summed, vector_size, upload_round, everyone,
                                                decryptors) for j in decryptors]
    vector, weight = threshold_seeded.combine(context, summed, vector_size, shares, upload_round, everyone)
    expected = sum(updates[i] * weights[i] for i in everyone)
    completed = abs(weight - sum(weights.values())) <= 1e-4 and float(np.abs(vector - expected).max()) <= 1e-4
    honest, coalition = n, list(range(1, t))
    own = sum((updates[i] * weights[i] for i in coalition), np.zeros(vector_size))
    return {
        "dropout": {"n": n, "t": t, "dropped": n - t, "completed": bool(completed),
                    "max_abs_error": float(np.abs(vector - expected).max())},
        "attacks": threshold_attack(keyed, uploads[honest], vector_size, honest, coalition, updates[honest]),
        "control_t_sites": threshold_attack(keyed, uploads[honest], vector_size, honest, list(range(1, t + 1)),
                                            updates[honest]),
        "aggregate_floor": correlation(vector - own, updates[honest]),
    }


def key_substitution(keyed: Keyed) -> dict[str, bool]:
    """A relay puts its own X25519 exchange key and public-key share in place of member 1's, each signed by the
    member as the round path signs them (``participant.threshold_keys``: purposes ``exchange`` and ``key-share``),
    in five ways per key; every one must be refused by ``crypto.attest`` under real certificates of a real
    federation CA (made in a temporary directory), while the member's genuine statements verify (the control)."""
    keys = {"exchange": (sealing.public_bytes(sealing.new_exchange_key()),
                         sealing.public_bytes(sealing.new_exchange_key())),
            "key-share": tuple(np.asarray(share, dtype=np.uint64).tobytes() for share in keyed.public_shares[:2])}
    job, member = "bench-threshold", "participant:site-1"
    out: dict[str, bool] = {}
    with tempfile.TemporaryDirectory(prefix="fedprompt-bench-ca-") as tmp:
        ca = CertificateAuthority.init(Path(tmp) / "ca")

        def credentials(identity: str, sans: list[str] | None = None) -> KeyCredentials:
            key, cert = ca.issue(identity, Path(tmp) / identity.replace(":", "-"), sans)
            return KeyCredentials.from_files(ca.ca_cert_path, cert, key)

        site, other = credentials(member), credentials("participant:site-2")
        relay = credentials("coordinator:relay", sans=["localhost"])
        trust = KeyTrust(load_cert(ca.ca_cert_path))
        for purpose, (own, relays) in keys.items():
            genuine, swapped = (digest(own),), (digest(relays),)
            older = site.signer.sign(job, purpose, genuine)
            statement = site.signer.sign(job, purpose, genuine)
            attempts = {
                "the member's statement with the relay's key": (statement, swapped),
                "the member's statement with its digest rewritten to the relay's key":
                    (statement.replace(genuine[0].hex().encode(), swapped[0].hex().encode()), swapped),
                "the relay's own statement relabelled as the member's":
                    (relay.signer.sign(job, purpose, swapped).replace(b"coordinator:relay", member.encode()),
                     swapped),
                "another site's statement for the relay's key": (other.signer.sign(job, purpose, swapped), swapped),
                "the member's older statement replayed after its newer one": (older, genuine),
            }
            out[f"{purpose}: the genuine statement verifies"] = _verifies(trust, statement, job, member, purpose,
                                                                          genuine)
            out.update({f"{purpose}: refused: {name}": not _verifies(trust, blob, job, member, purpose, digests)
                        for name, (blob, digests) in attempts.items()})
    return out


def _verifies(trust: KeyTrust, blob: bytes, job: str, identity: str, purpose: str, keys: tuple[bytes, ...]) -> bool:
    try:
        trust.verify(blob, job_id=job, identity=identity, purpose=purpose, digests=keys)
    except AttestationError:
        return False
    return True
