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
   answers the two rounds of the relinearisation-key protocol RKG and, one message per element, the one round
   of the Galois-key protocol RTG (Mouchet et al., PETS 2021; ``crypto.threshold_evalkeys``) for conjugation and the power-of-two
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

import hashlib
import math
import struct
from collections.abc import Mapping, Sequence

import numpy as np

from fedprompt.crypto import gram, threshold, threshold_evalkeys
from fedprompt.crypto.errors import InvalidCiphertext, InvalidValue, ParameterError
from fedprompt.crypto.gram import GRAM_DEGREE, galois_elements, load_gram, pairs
from fedprompt.crypto.rns import Poly
from fedprompt.crypto.threshold import KeyShare, Member, ThresholdContext, ThresholdParams
from fedprompt.crypto.threshold_params import RENYI_ORDER

#: Measured per-entry l2 noise of a packed Gram entry, per member: an absolute floor and a slope in the norm bound,
#: each with 2 bits of margin (module docstring).
NOISE_FLOOR_BITS = 22.4
NOISE_SLOPE_BITS = 16.8
#: The one-multiplication chain at the 128-bit maximum for N = 8192 (216 of 218 bits) and its scale.
CHAIN = (60, 48, 48, 60)
SCALE_BITS = 48
#: Largest norm bound: the entries ``2 R^2`` at scale 2^48 stay far below the Gram level's 108-bit modulus.
MAX_NORM_BOUND = 2.0**26
#: Widest flooding a Gram share may carry: 64-bit Gaussian samples, and far below the Gram level's modulus.
MAX_SIGMA = 2.0**56
_MESSAGE = struct.Struct("<5sHII")  # magic, member index, Galois element (0: none), polynomials
_RELIN1, _SUM1, _RELIN2, _GALOIS = b"FPER1", b"FPES1", b"FPER2", b"FPEG1"


def gram_threshold_params(members: int, threshold: int = 0, max_decryptions: int = 4096) -> ThresholdParams:
    """A threshold job with an encrypted Gram matrix: N = 8192, :data:`CHAIN` at scale 2^:data:`SCALE_BITS`,
    public-key uploads (module docstring)."""
    return ThresholdParams(members, threshold, GRAM_DEGREE, CHAIN, SCALE_BITS, max_decryptions, seeded_uploads=False)


def gram_noise_bound(params: ThresholdParams, updates: int, norm_bound: float) -> float:
    """l2 bound on the noise of the packed Gram ciphertext of ``updates`` updates of norm at most ``norm_bound``."""
    entries = len(pairs(updates))
    per_entry = params.members * (2.0**NOISE_FLOOR_BITS + 2.0**NOISE_SLOPE_BITS * norm_bound)
    return math.sqrt(entries) * per_entry


def gram_smudging_sigma(params: ThresholdParams, updates: int, norm_bound: float) -> float:
    """Each Gram decryption share's flooding width: ``crypto.threshold``'s Renyi sizing on the Gram noise."""
    return math.sqrt(RENYI_ORDER * params.max_decryptions / 2) * gram_noise_bound(params, updates,
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
    sigma = gram_smudging_sigma(params, updates, norm_bound)
    if sigma > MAX_SIGMA:
        raise ParameterError(f"the Gram norm bound {norm_bound:g} with {updates} updates of {params.members} members "
                             f"needs flooding of 2^{math.log2(sigma):.1f}, beyond 2^{math.log2(MAX_SIGMA):.0f}; lower "
                             "the norm bound")


def encrypt(context: ThresholdContext, vector: np.ndarray, norm_bound: float) -> bytes:
    """A Gram job's upload: ``vector`` under the collective key with 0 in the weight slot (``crypto.gram``), refused
    if its l2 norm exceeds the job's norm bound, on which the decryptors' flooding is sized."""
    norm = float(np.linalg.norm(vector))
    if not norm <= norm_bound:
        raise InvalidValue(f"the update's l2 norm {norm:.4g} exceeds the job's Gram norm bound {norm_bound:g}; clip "
                           "it or lower the weight")
    return context.encrypt(vector, 0.0)


def upload_digests(upload: bytes, round_: int, attempt: int) -> tuple[bytes, bytes]:
    """What an uploader's attestation of a Gram job's upload lists (``crypto.attest``, purpose ``gram-upload``):
    the upload's digest and its round attempt's.  Anyone can encrypt under the collective key, the coordinator
    included: without the signature it could put a ciphertext of its own (a basis vector) among the uploads and
    read coordinates of an honest update off the Gram scalars."""
    return hashlib.sha256(upload).digest(), hashlib.sha256(b"gram-upload:%d:%d" % (round_, attempt)).digest()


def over_bound(params: ThresholdParams, scalars: np.ndarray, updates: int, norm_bound: float) -> list[int]:
    """Positions of the updates whose decrypted squared norm ``G_uu`` exceeds ``norm_bound^2`` by more than the
    decryption error (:func:`gram_error`): an uploader that broke the bound the flooding was sized on."""
    limit = norm_bound**2 + gram_error(params, updates, norm_bound)
    diagonal = [scalars[k] for k, (u, v) in enumerate(pairs(updates)) if u == v]
    return [u for u, value in enumerate(diagonal) if value > limit]


# -- collective evaluation keys -------------------------------------------------------------------------------
def _pack(magic: bytes, index: int, element: int, polys: Sequence[Poly]) -> bytes:
    return _MESSAGE.pack(magic, index, element, len(polys)) + b"".join(np.asarray(p, dtype=np.uint64).tobytes()
                                                                       for p in polys)


def _unpack(context: ThresholdContext, magic: bytes, index: int, element: int, data: bytes) -> list[Poly]:
    ring = context.ring
    count = ring.data_limbs * (1 if magic == _GALOIS else 2)
    if len(data) < _MESSAGE.size or _MESSAGE.unpack_from(data) != (magic, index, element, count):
        raise InvalidCiphertext(f"evaluation-key message of member {index} is not the expected {magic!r} message "
                                f"of {count} polynomials")
    return [poly.astype(object) for poly in ring.parse_residues(data, _MESSAGE.size, count, len(ring.moduli))]


def _pairs_of(polys: Sequence[Poly]) -> threshold_evalkeys.Pairs:
    return [(polys[k], polys[k + 1]) for k in range(0, len(polys), 2)]


def _flat(pairs_: threshold_evalkeys.Pairs) -> list[Poly]:
    return [poly for pair in pairs_ for poly in pair]


def _members(context: ThresholdContext, messages: Mapping[int, bytes], what: str) -> None:
    expected = list(range(1, context.threshold.members + 1))
    if sorted(messages) != expected:
        raise InvalidValue(f"the collective evaluation keys need {what} from each of members {expected}, got "
                           f"{sorted(messages)}")


class EvaluationKeyParty:
    """A member's part in the collective evaluation keys.  Each message fits a 4 MiB gRPC message: RKG's first
    round (1.6 MB at N = 8192), one RTG share per Galois element (0.8 MB), RKG's second round (1.6 MB)."""

    def __init__(self, context: ThresholdContext, member: Member, job_seed: bytes, stored: bytes = b"") -> None:
        """``stored``: RKG's ephemeral secret kept across a restart between the rounds (:meth:`ephemeral_bytes`)."""
        self.context, self.member, self.job_seed = context, member, job_seed
        self._relin = threshold_evalkeys.RelinParty(member, stored)

    def ephemeral_bytes(self) -> bytes:
        return self._relin.ephemeral_bytes()

    def relin_round1(self) -> bytes:
        """RKG's first round, one pair per data prime."""
        crps = threshold_evalkeys.reference_polys(self.context.ring, self.job_seed)
        return _pack(_RELIN1, self.member.index, 0, _flat(self._relin.round1(crps)))

    def galois_share(self, element: int) -> bytes:
        """The RTG share for one of the Gram computation's Galois elements (``crypto.gram.galois_elements``)."""
        if element not in galois_elements(self.context.params):
            raise InvalidValue(f"Galois element {element} is not one the encrypted Gram matrix uses")
        crps = threshold_evalkeys.galois_reference_polys(self.context.ring, self.job_seed, element)
        return _pack(_GALOIS, self.member.index, element,
                     threshold_evalkeys.galois_share(self.member, crps, element))

    def round2(self, summed: bytes) -> bytes:
        """RKG's second round on the members' summed first round (:func:`sum_round1`, which a member computes
        itself from the n attested first-round messages: round 2 on a polynomial of the relay's choosing would
        be an RLWE sample the relay designed)."""
        first = _pairs_of(_unpack(self.context, _SUM1, 0, 0, summed))
        return _pack(_RELIN2, self.member.index, 0, _flat(self._relin.round2(first)))


def _summed(context: ThresholdContext, magic: bytes, messages: Mapping[int, bytes], what: str
            ) -> threshold_evalkeys.Pairs:
    _members(context, messages, what)
    answers = [_pairs_of(_unpack(context, magic, i, 0, data)) for i, data in sorted(messages.items())]
    return threshold_evalkeys.aggregate(context.ring, answers, context.threshold.members)


def round1_elements(params: ThresholdParams) -> tuple[int, ...]:
    """A member's first-round messages in the order its attestation lists their digests: RKG's first round
    (element 0), then one RTG share per Galois element of the Gram computation."""
    return (0, *galois_elements(params.ckks))


def check_message(context: ThresholdContext, round_: int, index: int, element: int, data: bytes) -> None:
    """Refuse a relayed message that is not member ``index``'s well-formed message of round ``round_`` (1 or 2)
    for ``element`` (:func:`round1_elements`; 0 in round 2): header, size and residues."""
    magic = _RELIN2 if round_ == 2 else _GALOIS if element else _RELIN1
    _unpack(context, magic, index, element, data)


def assemble(context: ThresholdContext, job_seed: bytes, round1: Mapping[int, Mapping[int, bytes]],
             round2: Mapping[int, bytes]) -> bytes:
    """:func:`evaluation_keys` from each member's first round (member index -> element -> message) and second."""
    galois = {g: {i: parts[g] for i, parts in round1.items()} for g in round1_elements(context.threshold)[1:]}
    return evaluation_keys(context, job_seed, {i: parts[0] for i, parts in round1.items()}, galois, round2)


def sum_round1(context: ThresholdContext, relin1: Mapping[int, bytes]) -> bytes:
    """The sum of every member's first RKG round (by member index), which each member needs for its second."""
    return _pack(_SUM1, 0, 0, _flat(_summed(context, _RELIN1, relin1, "a first-round message")))


def evaluation_keys(context: ThresholdContext, job_seed: bytes, relin1: Mapping[int, bytes],
                    galois: Mapping[int, Mapping[int, bytes]], relin2: Mapping[int, bytes]) -> bytes:
    """The collective relinearisation and Galois keys in ``crypto.gram``'s framing under the collective key id,
    from every member's messages (``galois``: element -> member index -> share): public evaluation material,
    computed by anyone."""
    ring, members = context.ring, context.threshold.members
    elements = galois_elements(context.params)
    if sorted(galois) != sorted(elements):
        raise InvalidValue(f"the Galois keys need shares for the elements {sorted(elements)}, got {sorted(galois)}")
    first = _summed(context, _RELIN1, relin1, "a first-round message")
    second = _summed(context, _RELIN2, relin2, "a second-round message")
    crps, shares = {}, {}
    for element in elements:
        _members(context, galois[element], f"a share for Galois element {element}")
        crps[element] = threshold_evalkeys.galois_reference_polys(ring, job_seed, element)
        shares[element] = [_unpack(context, _GALOIS, i, element, data) for i, data in sorted(galois[element].items())]
    keys = threshold_evalkeys.galois_keys(ring, crps, shares, members)
    return gram.frame_evaluation_keys(context.key_id, threshold_evalkeys.relin_keys(ring, first, second), keys)


# -- threshold decryption of the Gram scalars ------------------------------------------------------------------
def _c1s(context: ThresholdContext, payload: bytes, updates: int) -> list[Poly]:
    return [context.ring.read_parts(ct, 2)[1] for ct in load_gram(context, payload, updates, context.key_id)]


def decryption_share(context: ThresholdContext, key: KeyShare, evaluator: gram.GramEvaluator, uploads: Sequence[bytes],
                     vector_size: int, decryptors: Sequence[int], norm_bound: float) -> bytes:
    """Member ``key.index``'s flooded share of the packed Gram ciphertext of ``uploads`` (the round's uploads, in
    the coordinator's order), for ``decryptors``; the flooding is sized on the Gram noise, and one share per
    ``c1`` is the record the sums' shares keep too.

    The member computes the Gram ciphertext itself with the collective evaluation keys (``evaluator``, built from
    keys it assembled itself with :func:`evaluation_keys`: keys a relay chose could steer the result's ``c1``,
    ``docs/he.md``): it never shares on a ciphertext another party made, so a coordinator cannot have one upload, or another quadratic
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


def check_share(context: ThresholdContext, payload: bytes, updates: int, share: bytes, member: int,
                decryptors: Sequence[int]) -> None:
    """Refuse on arrival what is not member ``member``'s share for ``decryptors`` on this payload's ``c1``s, so a
    foreign, stale or misattributed share is named before :func:`combine` (which checks the set as a whole)."""
    c1s = _c1s(context, payload, updates)
    index, members, digest, _ = threshold.share_polys(context.ring, share, len(c1s), c1s[0].shape[0])
    if index != member or list(members) != sorted(decryptors) or digest != threshold._digest(*c1s):
        raise InvalidCiphertext(f"not member {member}'s Gram decryption share for the decryptors "
                                f"{sorted(decryptors)} on this payload")


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
