"""The encrypted-Gram defence under threshold keys: collective evaluation keys, and the Gram scalars decrypted by
t flooded shares instead of two key holders.

Under a single key (``crypto.gram``) a dealer makes the evaluation keys and two key holders decrypt the packed
Gram ciphertext.  Under threshold keys nobody holds the secret ``s = sum s_i``, so:

1. **Parameters** (:func:`gram_threshold_params`): a one-multiplication chain at the 128-bit maximum for
   N = 8192, primes 60 + 48 + 48 + 60 (216 bits; the Homomorphic Encryption Standard allows 218), scale 2^48,
   and uploads under the collective public key: a product of two seeded uploads (each under its member's own
   ``s_i``, ``crypto.threshold_seeded``) would need multi-key relinearisation.  ``crypto.gram``'s single-key
   chain (40-bit primes, scale 2^40) would leave the public-key sums' flooding above 1e-2 per value from
   n = 10 members (``ThresholdParams.check`` refuses it); 2^8 more scale brings n = 50 to 6e-4.
2. **Evaluation keys** (:class:`EvaluationKeyParty`, :func:`sum_round1`, :func:`evaluation_keys`): every member
   answers the two rounds of the relinearisation-key protocol RKG and the one round of the Galois-key
   protocol RTG (Mouchet et al., PETS 2021; ``crypto.threshold_evalkeys``) for conjugation and the power-of-two
   rotations the Gram computation uses (``crypto.gram.galois_elements``).  Anyone sums the messages into
   SEAL's ``RelinKeys`` and ``GaloisKeys``, framed with the collective key id as ``crypto.gram`` frames a
   dealer's keys, so the coordinator's ``GramEvaluator`` computes the packed Gram ciphertext unchanged.
3. **Decryption** (:func:`decryption_share`, :func:`combine`): ``t`` members each recompute the packed Gram
   ciphertext of the round's uploads and make a share of it (``threshold.KeyShare.flooded``, one share per
   ``c1`` whatever the purpose); anyone with the shares and the coordinator's identical payload reads the
   ``n (n + 1) / 2`` scalars off the combined polynomial's coefficients.

**Smudging.**  The Renyi-divergence sizing of ``crypto.threshold`` (``sigma = sqrt(alpha Q / 2) B``) needs an
l2 bound ``B`` on the packed Gram ciphertext's noise, which, unlike a sum's, grows with the updates: the
product carries ``m_u e_v + m_v e_u`` besides the key-switching noise of relinearisation and ~13 rotations.
Measured exactly (integer coefficients of the decryption under the rebuilt secret, less ``2 <x_u, x_v>`` at
the Gram scale; n = 3 and 6 members, 2 to n updates, norms 1 to 10^5, integer updates spread over 6,914 values or
concentrated in 1 to 100, the same ones or not): per entry and member, at most ``2^20.4 + 2^14.8 R`` in l2,
``R`` the largest update's l2 norm (n = 6 stays below n = 3's figures per member).
:func:`gram_noise_bound` takes ``members * sqrt(entries)`` times that with 2 bits of margin; the
unit test measures real Gram ciphertexts' noise with the rebuilt secret against it.  ``R`` is a public
**norm bound** of the job: :func:`encrypt` refuses an update above it.  A malicious uploader can exceed it
(nothing proves a ciphertext's norm); its excess shows in the decrypted diagonal (``G_uu > R^2``), which
:func:`over_bound` names, and is a stated limit in ``docs/he.md``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence

import numpy as np

from fedprompt.crypto import gram, threshold, threshold_evalkeys
from fedprompt.crypto.errors import InvalidCiphertext, InvalidValue, ParameterError
from fedprompt.crypto.gram import GRAM_DEGREE, galois_elements, load_gram, pairs
from fedprompt.crypto.rns import Poly
from fedprompt.crypto.threshold import KeyShare, Member, ThresholdContext, ThresholdParams

#: Measured per-entry l2 noise of a packed Gram entry, per member: an absolute floor and a slope in the norm bound,
#: each with 2 bits of margin (module docstring).
NOISE_FLOOR_BITS = 22.4
NOISE_SLOPE_BITS = 16.8
#: The one-multiplication chain at the 128-bit maximum for N = 8192 (216 of 218 bits) and its scale.
CHAIN = (60, 48, 48, 60)
SCALE_BITS = 48
#: Largest norm bound: the entries ``2 R^2`` at scale 2^48 stay far below the Gram level's 108-bit modulus.
MAX_NORM_BOUND = 2.0**26
_MESSAGE = struct.Struct("<5sHI")
_ROUND1, _SUM1, _ROUND2 = b"FPEG1", b"FPES1", b"FPEG2"


def gram_threshold_params(members: int, threshold: int = 0, max_decryptions: int = 4096) -> ThresholdParams:
    """A threshold job with an encrypted Gram matrix: ``crypto.gram``'s chain, public-key uploads."""
    return ThresholdParams(members, threshold, GRAM_DEGREE, CHAIN, SCALE_BITS, max_decryptions, seeded_uploads=False)


def gram_noise_bound(params: ThresholdParams, updates: int, norm_bound: float) -> float:
    """l2 bound on the noise of the packed Gram ciphertext of ``updates`` updates of norm at most ``norm_bound``."""
    entries = len(pairs(updates))
    per_entry = params.members * (2.0**NOISE_FLOOR_BITS + 2.0**NOISE_SLOPE_BITS * norm_bound)
    return math.sqrt(entries) * per_entry


def gram_smudging_sigma(params: ThresholdParams, updates: int, norm_bound: float) -> float:
    """Each Gram decryption share's flooding width: ``crypto.threshold``'s Renyi sizing on the Gram noise."""
    return math.sqrt(threshold._RENYI_ORDER * params.max_decryptions / 2) * gram_noise_bound(params, updates,
                                                                                             norm_bound)


def gram_error(params: ThresholdParams, updates: int, norm_bound: float) -> float:
    """Expected largest error of a decrypted Gram scalar: 5 standard deviations of ``t`` shares' flooding on one
    coefficient, which holds twice the scalar at the scale ~2^48."""
    return 5 * math.sqrt(params.t) * gram_smudging_sigma(params, updates, norm_bound) / (2 * 2.0**params.scale_bits)


def check(params: ThresholdParams, updates: int, norm_bound: float) -> None:
    """Refuse a Gram decryption these parameters cannot serve: the chain, the update count, the norm bound."""
    if (params.poly_modulus_degree, params.coeff_mod_bit_sizes, params.scale_bits, params.seeded_uploads) != (
            GRAM_DEGREE, CHAIN, SCALE_BITS, False):
        raise ParameterError("an encrypted Gram matrix under threshold keys needs gram_threshold_params (N = 8192, "
                             "primes 60 + 48 + 48 + 60, scale 2^48, public-key uploads)")
    if not 1 <= updates <= params.members:
        raise InvalidValue(f"a Gram matrix covers 1 to {params.members} updates (one per member), got {updates}")
    if not 0 < norm_bound <= MAX_NORM_BOUND:
        raise ParameterError(f"the Gram norm bound must be in (0, {MAX_NORM_BOUND:.0f}], got {norm_bound:g}")


def encrypt(context: ThresholdContext, vector: np.ndarray, norm_bound: float) -> bytes:
    """A Gram job's upload: ``vector`` under the collective key with 0 in the weight slot (``crypto.gram``), refused
    if its l2 norm exceeds the job's norm bound, on which the decryptors' flooding is sized."""
    norm = float(np.linalg.norm(vector))
    if not norm <= norm_bound:
        raise InvalidValue(f"the update's l2 norm {norm:.4g} exceeds the job's Gram norm bound {norm_bound:g}; clip "
                           "it or lower the weight")
    return context.encrypt(vector, 0.0)


def over_bound(scalars: np.ndarray, updates: int, norm_bound: float) -> list[int]:
    """Positions of the updates whose decrypted squared norm ``G_uu`` exceeds ``norm_bound^2``: an uploader that
    broke the bound the flooding was sized on (a small margin allows for the decryption error)."""
    diagonal = [scalars[k] for k, (u, v) in enumerate(pairs(updates)) if u == v]
    return [u for u, value in enumerate(diagonal) if value > norm_bound**2 * (1 + 1e-3)]


# -- collective evaluation keys -------------------------------------------------------------------------------
def _pack(magic: bytes, index: int, polys: Sequence[Poly]) -> bytes:
    return _MESSAGE.pack(magic, index, len(polys)) + b"".join(np.asarray(p, dtype=np.uint64).tobytes() for p in polys)


def _unpack(context: ThresholdContext, magic: bytes, index: int, data: bytes, count: int) -> list[Poly]:
    ring = context.ring
    if len(data) < _MESSAGE.size or _MESSAGE.unpack_from(data) != (magic, index, count):
        raise InvalidCiphertext(f"evaluation-key message of member {index} is not the expected {magic!r} message "
                                f"of {count} polynomials")
    return threshold._polys(data, _MESSAGE.size, count, len(ring.moduli), ring)


def _relin_count(context: ThresholdContext) -> int:
    return 2 * context.ring.data_limbs


def _round1_count(context: ThresholdContext) -> int:
    return _relin_count(context) + len(galois_elements(context.params)) * context.ring.data_limbs


def _pairs_of(polys: Sequence[Poly]) -> threshold_evalkeys.Pairs:
    return [(polys[k], polys[k + 1]) for k in range(0, len(polys), 2)]


def _members(context: ThresholdContext, messages: Mapping[int, bytes], what: str) -> None:
    expected = list(range(1, context.threshold.members + 1))
    if sorted(messages) != expected:
        raise InvalidValue(f"the collective evaluation keys need {what} from each of members {expected}, got "
                           f"{sorted(messages)}")


class EvaluationKeyParty:
    """A member's part in the collective evaluation keys; it holds RKG's ephemeral secret between the rounds."""

    def __init__(self, context: ThresholdContext, member: Member, job_seed: bytes) -> None:
        self.context, self.member, self.job_seed = context, member, job_seed
        self._relin = threshold_evalkeys.RelinParty(member)

    def round1(self) -> bytes:
        """RKG's first round and every RTG share, one message (what the member publishes, signed, at key setup)."""
        ring = self.context.ring
        relin = self._relin.round1(threshold_evalkeys.reference_polys(ring, self.job_seed))
        polys = [poly for pair in relin for poly in pair]
        for element in galois_elements(self.context.params):
            crps = threshold_evalkeys.galois_reference_polys(ring, self.job_seed, element)
            polys += threshold_evalkeys.galois_share(self.member, crps, element)
        return _pack(_ROUND1, self.member.index, polys)

    def round2(self, summed: bytes) -> bytes:
        """RKG's second round on the members' summed first round (:func:`sum_round1`)."""
        first = _pairs_of(_unpack(self.context, _SUM1, 0, summed, _relin_count(self.context)))
        polys = [poly for pair in self._relin.round2(first) for poly in pair]
        return _pack(_ROUND2, self.member.index, polys)


def _summed_relin(context: ThresholdContext, round1: Mapping[int, bytes]) -> threshold_evalkeys.Pairs:
    _members(context, round1, "a first-round message")
    relin = _relin_count(context)
    answers = [_pairs_of(_unpack(context, _ROUND1, i, data, _round1_count(context))[:relin])
               for i, data in sorted(round1.items())]
    return threshold_evalkeys.aggregate(context.ring, answers, context.threshold.members)


def sum_round1(context: ThresholdContext, round1: Mapping[int, bytes]) -> bytes:
    """The sum of every member's first RKG round (by index), which each member needs for its second round."""
    return _pack(_SUM1, 0, [poly for pair in _summed_relin(context, round1) for poly in pair])


def evaluation_keys(context: ThresholdContext, job_seed: bytes, round1: Mapping[int, bytes],
                    round2: Mapping[int, bytes]) -> bytes:
    """The collective relinearisation and Galois keys in ``crypto.gram``'s framing under the collective key id,
    from every member's two messages (by index): public evaluation material, computed by anyone."""
    ring, members = context.ring, context.threshold.members
    _members(context, round2, "a second-round message")
    first = _summed_relin(context, round1)
    second = threshold_evalkeys.aggregate(
        ring, [_pairs_of(_unpack(context, _ROUND2, i, data, _relin_count(context))) for i, data in
               sorted(round2.items())], members)
    elements = galois_elements(context.params)
    crps = {g: threshold_evalkeys.galois_reference_polys(ring, job_seed, g) for g in elements}
    relin, limbs = _relin_count(context), ring.data_limbs
    shares: dict[int, list[list[Poly]]] = {g: [] for g in elements}
    for i in sorted(round1):
        polys = _unpack(context, _ROUND1, i, round1[i], _round1_count(context))[relin:]
        for k, element in enumerate(elements):
            shares[element].append(polys[k * limbs : (k + 1) * limbs])
    galois = threshold_evalkeys.galois_keys(ring, crps, shares, members)
    return gram.frame_evaluation_keys(context.key_id, threshold_evalkeys.relin_keys(ring, first, second), galois)


# -- threshold decryption of the Gram scalars ------------------------------------------------------------------
def _c1s(context: ThresholdContext, payload: bytes, updates: int) -> list[Poly]:
    return [context.ring.read_ciphertext(ct)[1] for ct in load_gram(context, payload, updates, context.key_id)]


def decryption_share(context: ThresholdContext, key: KeyShare, evaluator: gram.GramEvaluator, uploads: Sequence[bytes],
                     vector_size: int, decryptors: Sequence[int], norm_bound: float) -> bytes:
    """Member ``key.index``'s flooded share of the packed Gram ciphertext of ``uploads`` (the round's uploads, in
    the coordinator's order), for ``decryptors``; the flooding is sized on the Gram noise, and one share per
    ``c1`` is the record the sums' shares keep too.

    The member computes the Gram ciphertext itself with the collective evaluation keys (``evaluator``): it never
    shares on a ciphertext another party made, so a coordinator cannot have one upload, or another quadratic
    function of the uploads, decrypted in its place.  SEAL's evaluation is deterministic, so the coordinator's
    payload of the same uploads has the same ``c1`` and :func:`combine` accepts the shares for it; a payload of
    other uploads is refused there."""
    updates = len(uploads)
    check(context.threshold, updates, norm_bound)
    payload = evaluator.gram([evaluator.context.parse(u, context.key_id, vector_size) for u in uploads])
    c1s = _c1s(context, payload, updates)
    digest = threshold._digest(*c1s)
    return key.flooded(c1s, key.share_of(range(1, context.threshold.members + 1)), decryptors, digest, digest,
                       sigma=gram_smudging_sigma(context.threshold, updates, norm_bound))


def combine(context: ThresholdContext, payload: bytes, updates: int, shares: Sequence[bytes],
            norm_bound: float) -> np.ndarray:
    """The ``n (n + 1) / 2`` Gram scalars ``<x_u, x_v>`` in ``crypto.gram.pairs`` order from the shares of one
    decryptor set (``threshold.combine`` refuses missing, foreign or duplicate shares).

    A wrong share (a dishonest or broken decryptor) is refused when it shows: the packed polynomial's positions
    that hold no entry must decrypt to noise within 8 standard deviations of the shares' flooding (plus 2^-30 of
    the largest entry for the floating-point decoding).  A share shifted at the entry positions alone does not
    show; ``docs/he.md`` states that limit."""
    params = context.threshold
    check(params, updates, norm_bound)
    cts = load_gram(context, payload, updates, context.key_id)
    values = gram.packed_values(context, threshold.combine(context.ring, params, cts, shares))
    entries = len(pairs(updates))
    if not np.isfinite(values).all():
        raise InvalidCiphertext("the Gram scalars do not decode: wrong shares or a corrupted payload")
    flooding = 8 * math.sqrt(len(shares)) * gram_smudging_sigma(params, updates, norm_bound) / gram.gram_scale(context)
    tolerance = flooding + 2.0**-30 * float(np.abs(values[:entries]).max())
    if np.abs(values[entries:]).max(initial=0.0) > tolerance:
        raise InvalidCiphertext("the combined Gram polynomial is not noise outside its entries: a wrong decryption "
                                "share or a corrupted payload")
    return values[:entries] / 2.0
