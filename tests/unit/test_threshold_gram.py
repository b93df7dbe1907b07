"""The encrypted-Gram defence under threshold keys (``crypto.threshold_gram``): the members' collective evaluation
keys let the coordinator's unchanged ``GramEvaluator`` compute the packed Gram ciphertext, and t members' flooded
shares decrypt its scalars to the plaintext inner products; the flooding is sized on a noise bound that real
Gram ciphertexts stay within."""

from __future__ import annotations

import math
import os
from fractions import Fraction
from functools import cache

import numpy as np
import pytest
import tenseal.sealapi as seal

from fedprompt.crypto import gram, threshold_gram
from fedprompt.crypto.ckks import PublicContext
from fedprompt.crypto.errors import InvalidCiphertext, InvalidValue, ParameterError
from fedprompt.crypto.threshold import KeyShare, Member, ThresholdContext, ThresholdParams
from tests.thresholds import key_setup

PARAMS = threshold_gram.gram_threshold_params(members=3)  # t = 2
SEED = b"gram-job"
SIZE = 6914  # the demo's prompt
NORM_BOUND = 1000.0


@cache
def job() -> tuple[ThresholdContext, list[Member], dict[int, KeyShare], gram.GramEvaluator, gram.GramEvaluator]:
    """Key setup as the members run it: key shares, then the evaluation keys' two rounds through bytes; the
    coordinator's Gram evaluator and the members' own one, each from the assembled keys and no secret."""
    context, members, shares = key_setup(PARAMS, SEED)
    ring = context.ring
    parties = {m.index: threshold_gram.EvaluationKeyParty(context, m, SEED) for m in members}
    first = {i: p.relin_round1() for i, p in parties.items()}
    galois = {g: {i: p.galois_share(g) for i, p in parties.items()} for g in gram.galois_elements(PARAMS.ckks)}
    assert max(len(m) for m in [*first.values(), *galois[3].values()]) < 4 * 2**20  # each fits a gRPC message
    # Member 1 restarts between the rounds: its secret and RKG's ephemeral secret come back from its state.
    restored = Member(PARAMS, ring, 1, members[0].secret_bytes())
    parties[1] = threshold_gram.EvaluationKeyParty(context, restored, SEED, parties[1].ephemeral_bytes())
    summed = threshold_gram.sum_round1(context, first)
    second = {i: p.round2(summed) for i, p in parties.items()}
    keys = threshold_gram.evaluation_keys(context, SEED, first, galois, second)
    coordinator, member = (gram.GramEvaluator(PublicContext(context.public_bytes(), PARAMS.ckks, context.key_id), keys)
                           for _ in range(2))
    return context, members, shares, coordinator, member


def updates(rng: np.random.Generator) -> list[np.ndarray]:
    """Two honest weighted updates pointing one way and a poisoned one, flipped and scaled up."""
    direction = rng.normal(0, 1, SIZE)
    honest = [100 * (direction + rng.normal(0, 0.5, SIZE)) / np.sqrt(SIZE) for _ in range(2)]
    return [*honest, -8 * honest[0]]


def upload(xs: list[np.ndarray], norm_bound: float = NORM_BOUND) -> list[bytes]:
    context = job()[0]
    return [threshold_gram.encrypt(context, x, norm_bound) for x in xs]


def packed(uploads: list[bytes]) -> bytes:
    """The coordinator's packed Gram ciphertext of the uploads."""
    context, _, _, coordinator, _ = job()
    return coordinator.gram([coordinator.context.parse(u, context.key_id, SIZE) for u in uploads])


def share(j: int, uploads: list[bytes], decryptors: list[int], norm_bound: float = NORM_BOUND) -> bytes:
    """Member j's share: it recomputes the Gram of the uploads with its own evaluator."""
    context, _, shares, _, member = job()
    return threshold_gram.decryption_share(context, shares[j], member, uploads, SIZE, decryptors, norm_bound)


def decrypt(uploads: list[bytes], decryptors: list[int], norm_bound: float = NORM_BOUND) -> np.ndarray:
    parts = [share(j, uploads, decryptors, norm_bound) for j in decryptors]
    return threshold_gram.combine(job()[0], packed(uploads), len(uploads), parts, norm_bound)


def inner_products(xs: list[np.ndarray]) -> np.ndarray:
    return np.array([xs[u] @ xs[v] for u, v in gram.pairs(len(xs))])


def test_parameters_are_the_gram_chain_at_128_bit_security_with_public_key_uploads() -> None:
    assert PARAMS.ckks.multiplicative and PARAMS.ckks.security_bits == 128 and not PARAMS.seeded_uploads
    PARAMS.check()
    threshold_gram.check(PARAMS, 3, NORM_BOUND)
    with pytest.raises(ParameterError, match="gram_threshold_params"):
        threshold_gram.check(ThresholdParams(members=3), 3, NORM_BOUND)
    with pytest.raises(InvalidValue, match="1 to 3 updates"):
        threshold_gram.check(PARAMS, 4, NORM_BOUND)
    with pytest.raises(ParameterError, match="norm bound"):
        threshold_gram.check(PARAMS, 3, 0.0)
    large = threshold_gram.gram_threshold_params(members=1000)
    threshold_gram.check(large, 1000, 1.0)
    with pytest.raises(ParameterError, match="lower the norm bound"):  # flooding beyond 64-bit samples
        threshold_gram.check(large, 1000, threshold_gram.MAX_NORM_BOUND)


def test_t_members_decrypt_the_coordinators_gram_to_the_plaintext_inner_products() -> None:
    xs = updates(np.random.default_rng(1))
    expected = inner_products(xs)
    error = threshold_gram.gram_error(PARAMS, len(xs), NORM_BOUND)
    assert error < 1e-4 * np.abs(expected).min()  # precise enough to rank distances
    for decryptors in ([1, 2], [2, 3]):
        scalars = decrypt(upload(xs), decryptors)  # fresh uploads per decryptor set: one share per ciphertext
        assert np.abs(scalars - expected).max() < error
        g = gram.to_matrix(scalars, len(xs))
        distances = np.diag(g)[:, None] + np.diag(g)[None, :] - 2 * g
        assert distances[0, 1] < distances[0, 2] / 10  # the poisoned update stands apart, as in single-key mode
        assert threshold_gram.over_bound(PARAMS, scalars, len(xs), NORM_BOUND) == []


def gram_noise(context: ThresholdContext, decryptor: seal.Decryptor, payload: bytes, xs: list[np.ndarray]) -> float:
    """The l2 norm of a packed Gram ciphertext's noise, exactly: its decryption's integer coefficients (inverse NTT
    per prime, CRT) less ``2 <x_u, x_v>`` at the Gram scale ``2^96 / q``, for integer-valued updates."""
    ring = context.ring
    (ct,) = gram.load_gram(context, payload, len(xs), context.key_id)
    plain = seal.Plaintext()
    decryptor.decrypt(ct, plain)
    limbs = ct.coeff_modulus_size()
    residues = ring.read_plaintext_residues(plain, limbs)
    modulus = int(np.prod(np.array(ring.moduli[:limbs], dtype=object)))
    coeffs = np.zeros(ring.n, dtype=object)
    for i, q in enumerate(ring.moduli[:limbs]):
        basis = modulus // q * pow(modulus // q, -1, q)
        coeffs = (coeffs + ring._ntts[i].inverse(residues[i]).astype(object) * basis) % modulus
    coeffs = np.where(coeffs > modulus // 2, coeffs - modulus, coeffs)
    scale = Fraction(2 ** (2 * PARAMS.scale_bits), ring.moduli[limbs])  # the prime the product was rescaled by
    for k, (u, v) in enumerate(gram.pairs(len(xs))):
        exact = 2 * int(sum(int(a) * int(b) for a, b in zip(xs[u], xs[v], strict=True)))
        coeffs[k // 2 + (k % 2) * ring.n // 2] -= round(exact * scale)
    return math.sqrt(sum(int(c) ** 2 for c in coeffs))


def shaped(rng: np.random.Generator, used: int, shared: bool, norm: float, count: int = 3) -> list[np.ndarray]:
    """``count`` integer-valued updates of norm at most ``norm`` on ``used`` values each, the same ones if ``shared``."""
    where = rng.choice(SIZE, used, replace=False)
    xs = []
    for _ in range(count):
        x = np.zeros(SIZE)
        x[where if shared else rng.choice(SIZE, used, replace=False)] = rng.normal(0, 1, used)
        xs.append(np.trunc(x * norm / np.linalg.norm(x)))  # toward zero: within the norm
    return xs


def test_the_gram_noise_stays_within_the_bound_its_flooding_is_sized_on() -> None:
    """The exact noise of real packed Gram ciphertexts, measured with the collective secret rebuilt from the
    members' own secrets, for spread, one-hot and concentrated updates at two norm bounds.  It dwarfs a sum's
    noise, so the sums' flooding would not do."""
    context, members, _, _, _ = job()
    ring = context.ring
    secret = sum(np.frombuffer(m.secret_bytes(), dtype=np.uint64).astype(object).reshape(len(ring.moduli), ring.n)
                 for m in members) % ring.q(len(ring.moduli))
    decryptor = seal.Decryptor(ring.context, ring.secret_key(secret))
    rng = np.random.default_rng(2)
    worst = 0.0
    for norm_bound in (NORM_BOUND, 10 * NORM_BOUND):
        bound = threshold_gram.gram_noise_bound(PARAMS, 3, norm_bound)
        for used, shared in ((SIZE, True), (1, False), (3, False), (3, True)):
            xs = shaped(rng, used, shared, norm_bound)
            noise = gram_noise(context, decryptor, packed(upload(xs, norm_bound)), xs)
            assert noise < bound, (norm_bound, used, shared)
            worst = max(worst, noise)
    assert worst > 2**10 * PARAMS.noise_bound


def test_one_share_per_gram_ciphertext_t_shares_needed_and_a_forged_share_refused() -> None:
    context = job()[0]
    xs = updates(np.random.default_rng(3))
    ups = upload(xs)
    payload = packed(ups)
    first = share(1, ups, [1, 3])
    with pytest.raises(InvalidValue, match="already made a decryption share"):
        share(1, ups, [1, 2])
    with pytest.raises(InvalidValue, match="every member of the set"):
        threshold_gram.combine(context, payload, 3, [first], NORM_BOUND)
    other = share(3, ups, [1, 3])
    polys = 2 * context.ring.n * 8  # the share's polynomial: two primes at the Gram level
    forged = first[:-polys] + np.asarray(context.ring.uniform(2, os.urandom), dtype=np.uint64).tobytes()
    with pytest.raises(InvalidCiphertext, match="not noise outside its entries"):  # a dishonest decryptor
        threshold_gram.combine(context, payload, 3, [forged, other], NORM_BOUND)
    assert np.abs(threshold_gram.combine(context, payload, 3, [first, other], NORM_BOUND)
                  - inner_products(xs)).max() < threshold_gram.gram_error(PARAMS, 3, NORM_BOUND)
    with pytest.raises(InvalidValue, match="2 or more distinct"):
        share(2, upload(xs), [2])
    # The shares are bound to the Gram the decryptors computed: a coordinator that swaps an upload for one of its
    # own (anyone can encrypt under the collective key) cannot have its payload decrypted with them.
    swapped = packed([*ups[:2], threshold_gram.encrypt(context, np.eye(1, SIZE)[0], NORM_BOUND)])
    with pytest.raises(InvalidCiphertext, match="made for other ciphertexts"):
        threshold_gram.combine(context, swapped, 3, [first, other], NORM_BOUND)
    with pytest.raises(InvalidCiphertext, match="Gram payload for 2 updates"):
        threshold_gram.combine(context, payload, 2, [first, other], NORM_BOUND)
    with pytest.raises(InvalidCiphertext, match="Gram payload for 3 updates"):  # an upload, not a Gram payload
        threshold_gram.combine(context, ups[0], 3, [first, other], NORM_BOUND)


def test_an_update_beyond_the_norm_bound_is_refused_and_a_breach_is_named() -> None:
    context = job()[0]
    xs = updates(np.random.default_rng(4))
    with pytest.raises(InvalidValue, match="exceeds the job's Gram norm bound"):
        threshold_gram.encrypt(context, 2 * NORM_BOUND * xs[0] / np.linalg.norm(xs[0]), NORM_BOUND)
    # A malicious uploader skips the check; the decrypted diagonal shows it (its noise was not covered).
    big = 1.5 * NORM_BOUND * xs[2] / np.linalg.norm(xs[2])
    ups = [*upload(xs[:2]), context.encrypt(big, 0.0)]
    assert threshold_gram.over_bound(PARAMS, decrypt(ups, [1, 3]), 3, NORM_BOUND) == [2]


def test_evaluation_key_messages_are_checked() -> None:
    context = job()[0]
    party = threshold_gram.EvaluationKeyParty(context, Member(PARAMS, context.ring, 1), SEED)
    first = party.relin_round1()
    with pytest.raises(InvalidValue, match=r"from each of members \[1, 2, 3\]"):
        threshold_gram.sum_round1(context, {1: first})
    with pytest.raises(InvalidCiphertext, match="member 2"):
        threshold_gram.sum_round1(context, {1: first, 2: first, 3: first})
    with pytest.raises(InvalidValue, match="already used"):  # one answer per round: a second would leak
        party.relin_round1()
    with pytest.raises(InvalidValue, match="not one the encrypted Gram matrix uses"):
        party.galois_share(5)
    with pytest.raises(InvalidValue, match="shares for the elements"):
        threshold_gram.evaluation_keys(context, SEED, {}, {}, {})
