"""Checking encrypted vectors for validity under the job's key, without showing anyone an individual update.

A coordinator holds no key, so it cannot tell a ciphertext made under the job's key from one made under
another key (or carrying values beyond the encryptable range): both parse.  Folded into the round's sum,
one such ciphertext turns the whole aggregate into garbage for every key holder.  So a key holder checks an
encrypted aggregate before it becomes a global version (``check`` with the sum's bound: every decrypted
value within what a sum can hold, the weight slot a whole number), and, when one fails, each update of the
attempt is checked alone, **masked**: the coordinator adds to each of its ciphertexts a plaintext of
independent uniform values in ``[-A, A]`` (``mask``), except in the weight slot, which the coordinator
already knows from the upload header.

Why this shows a key holder nothing useful of an update (see docs/he.md): it decrypts ``x_i + r_i`` per
value, with ``r_i`` uniform on ``[-A, A]`` and ``A = min((sum_bound - value_bound) / 2, 2^32)`` (6.7e7 with the
default parameters, 2^32 on the Gram chain); for an honest value the decrypted value's distribution is within statistical distance
``|x_i| / (2A)`` of one independent of ``x_i`` (7.5e-8 for a value of 10), and it learns the update's
weight.  The check accepts ``|x_i + r_i| <= A + value_bound``: every honest value passes, and any value
beyond ``sum_bound`` (what would make a sum wrap around) fails whatever the mask.  A ciphertext under another
key decrypts to values spread over the whole modulus (measured: 97 % of them beyond ``A``) and a weight slot
far from any whole number, so it fails with overwhelming probability.  Only the key holders see a masked value; the coordinator
learns the verdict and the weight.  The mask is drawn from OS entropy, never from the job seed.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import numpy as np
import tenseal.sealapi as seal

from fedprompt.crypto.ckks import CkksParams, PublicContext, SecretContext, _saved

#: Two independent key holders check every encrypted aggregate, so an encrypted job needs two members.
CHECKERS = 2

#: Relative slack on the bounds (CKKS decryption is approximate).
_SLACK = 1e-6


@dataclass(frozen=True)
class Verdict:
    """One encrypted vector checked by a key holder: usable or not, and the whole number in its weight slot
    (0 when the slot is not a whole number, or the vector is not usable)."""

    valid: bool
    weight: float


#: The largest mask, 2^32: encoding works in float64 (53-bit mantissa), so a mask of magnitude ``M`` blurs the
#: other slots of its ciphertext, the weight slot included, by about ``M * 2^-52`` (measured: a 2^97 mask, what
#: ``(sum_bound - value_bound) / 2`` is on the Gram chain, left weights off by 1e13).  2^32 keeps the weight
#: within 1e-6 of its whole number and still hides a value of 1,000 within 1.2e-7 (``|x| / 2A``).
MAX_MASK = 2.0**32


def mask_bound(params: CkksParams) -> float:
    """``A``: the mask's range, chosen so that a value beyond ``sum_bound`` fails the masked check for certain
    (``|x| > 2A + value_bound``) while every honest value passes, and no larger than ``MAX_MASK``, so that the
    weight slot is still read exactly next to the masked values."""
    return min((params.sum_bound - params.value_bound) / 2, MAX_MASK)


def mask(context: PublicContext, data: bytes, vector_size: int) -> bytes:
    """``data`` (one encrypted vector under the job's key id) with a fresh uniform mask on every value but the
    weight slot, for a key holder to ``check(..., masked=True)``.  The coordinator's side: no key needed."""
    ciphertexts = context.parse(data, context.key_id, vector_size)
    per = context.params.reals_per_ciphertext
    bound = mask_bound(context.params)
    rng = np.random.default_rng(secrets.randbits(128))
    blobs = []
    for index, ct in enumerate(ciphertexts):
        values = rng.uniform(-bound, bound, per)
        weight_slot = vector_size - index * per
        if 0 <= weight_slot < per:
            values[weight_slot] = 0.0
        plain = seal.Plaintext()
        context.encoder.encode((values[0::2] + 1j * values[1::2]).tolist(), ct.parms_id(), ct.scale, plain)
        context.evaluator.add_plain_inplace(ct, plain)
        blobs.append(_saved(ct.save))
    return context.frame(context.key_id, vector_size, blobs)


def check(secret: SecretContext, data: bytes, vector_size: int, masked: bool) -> Verdict:
    """A key holder's verdict on an encrypted aggregate (``masked`` False: values within the sum's bound) or
    on one masked update (values within the mask's bound plus one summand's).  It reveals no value: only
    whether the vector is usable and its weight."""
    params = secret.params
    bound = (mask_bound(params) + params.value_bound if masked else params.sum_bound) * (1 + _SLACK)
    reals = secret.decrypt_reals(data, vector_size)
    weight = float(reals[vector_size])
    whole = math.isfinite(weight) and abs(weight - round(weight)) < 1e-3
    valid = bool(np.all(np.isfinite(reals)) and np.all(np.abs(reals) <= bound)) and whole
    return Verdict(valid, float(round(weight)) if valid else 0.0)
