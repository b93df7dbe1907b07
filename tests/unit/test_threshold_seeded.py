"""Seeded threshold uploads with real SEAL ciphertexts: each member encrypts under its own secret on the round's
public polynomial, the coordinator folds them key-less, any t members decrypt the sum of any uploader set."""

from __future__ import annotations

import random

import numpy as np
import pytest

from fedprompt.crypto import shamir
from fedprompt.crypto import threshold_seeded as seeded
from fedprompt.crypto.errors import InvalidCiphertext, InvalidValue
from fedprompt.crypto.modarith import switch_down, switch_up
from fedprompt.crypto.threshold import ThresholdContext, share_polys
from fedprompt.crypto.threshold_seeded import UploadRound
from tests.thresholds import SIZE, Job, correlation, job, uploads

SEED = b"job-seed"


def shares(j: Job, data: bytes, upload: UploadRound, uploaders: list[int], decryptors: list[int]) -> list[bytes]:
    return [seeded.decryption_share(j.context, j.keys[d], data, SIZE, upload, uploaders, decryptors)
            for d in decryptors]


@pytest.mark.parametrize("members,uploaders,decryptors", [(3, [1, 2, 3], [2, 3]), (5, [1, 2, 3, 4, 5], [1, 3, 5]),
                                                          (5, [1, 2, 4], [3, 4, 5])])
def test_any_t_members_decrypt_the_sum_of_any_uploaders_with_the_others_dropped(
        members: int, uploaders: list[int], decryptors: list[int]) -> None:
    """Members outside ``decryptors`` dropped after uploading (or never uploaded): the rest decrypt the sum."""
    j = job(members, seeded=True)
    upload = UploadRound(SEED, round=10 + len(decryptors) + decryptors[0])
    data, expected, weight = uploads(j, upload, uploaders)
    vector, got_weight = seeded.combine(j.context, data, SIZE, shares(j, data, upload, uploaders, decryptors),
                                        upload, uploaders)
    assert got_weight == pytest.approx(weight, abs=1e-4)  # weights are fractions under threshold keys: not rounded
    assert np.abs(vector - expected).max() <= 1e-4


def test_an_upload_is_one_polynomial_and_a_seed_per_chunk() -> None:
    """Half a public-key upload: SEAL loads ``c0`` and expands ``c1`` from the seed, the same ``a_r`` for all."""
    j, pk = job(3, seeded=True), job(3)
    upload = UploadRound(SEED, round=20)
    blob = seeded.encrypt(j.context, j.members[0], np.ones(SIZE), 1.0, upload)
    assert len(blob) < 0.51 * len(pk.context.encrypt(np.ones(SIZE), 1.0))
    (ct,) = j.public.parse(blob, j.context.key_id, SIZE)
    assert np.array_equal(j.context.ring.read_ciphertext(ct)[1], seeded.reference_polys(j.context, upload, 1)[0])
    assert UploadRound(SEED, 20).seed(0) != UploadRound(SEED, 20, attempt=1).seed(0) != UploadRound(SEED, 21).seed(0)
    assert UploadRound(SEED, 20).seed(0) != UploadRound(SEED, 20).seed(1) != UploadRound(b"other", 20).seed(1)


def test_a_member_never_uses_one_reference_polynomial_twice() -> None:
    j = job(3, seeded=True)
    upload = UploadRound(SEED, round=30)
    seeded.encrypt(j.context, j.members[1], np.ones(SIZE), 1.0, upload)
    with pytest.raises(InvalidValue, match="already used this reference polynomial"):
        seeded.encrypt(j.context, j.members[1], np.zeros(SIZE), 1.0, upload)
    seeded.encrypt(j.context, j.members[1], np.zeros(SIZE), 1.0, UploadRound(SEED, round=30, attempt=1))
    with pytest.raises(InvalidValue, match="already used"):
        j.members[1].public_share(j.context.ring.uniform(1, np.random.default_rng(0).bytes))
    with pytest.raises(InvalidValue, match="round, attempt"):
        UploadRound(SEED, round=-1)


def test_one_share_per_member_and_round_attempt_and_a_retry_is_a_new_attempt() -> None:
    """Decryptor 3 of {1, 2, 3} drops after 1 and 2 answered.  A share for the same round attempt under another
    decryptor set or another uploader set is refused; the retry is a fresh attempt, re-uploaded by those online."""
    j = job(5, seeded=True)
    everyone, first = [1, 2, 3, 4, 5], UploadRound(SEED, round=40)
    blobs = {m.index: seeded.encrypt(j.context, m, np.ones(SIZE), 1.0, first) for m in j.members}
    folded = {}
    for uploaders in (everyone, [1, 2, 3, 4]):  # the coordinator may fold any subset of a round's uploads
        total = j.public.new_sum(SIZE)
        for i in uploaders:
            total.add(total.parse(blobs[i]))
        folded[len(uploaders)] = total.to_bytes()
    assert len(shares(j, folded[5], first, everyone, [1, 2, 3])[:2]) == 2
    for uploaders, decryptors in ((everyone, [1, 2, 4]), (everyone, [1, 2, 3]), ([1, 2, 3, 4], [1, 2, 4])):
        with pytest.raises(InvalidValue, match="already made a decryption share"):
            seeded.decryption_share(j.context, j.keys[1], folded[len(uploaders)], SIZE, first, uploaders, decryptors)
    retry = UploadRound(SEED, round=40, attempt=1)
    online = [1, 2, 4, 5]
    data, expected, weight = uploads(j, retry, online, seed=4)
    vector, got_weight = seeded.combine(j.context, data, SIZE, shares(j, data, retry, online, [1, 2, 4]), retry,
                                        online)
    assert got_weight == pytest.approx(weight, abs=1e-4)  # weights are fractions under threshold keys: not rounded
    assert np.abs(vector - expected).max() <= 1e-4


def test_a_sum_of_other_uploaders_or_another_round_is_refused() -> None:
    j = job(3, seeded=True)
    upload = UploadRound(SEED, round=50)
    data, _, _ = uploads(j, upload, [1, 2])
    for uploaders, other in (([1, 2, 3], upload), ([1, 2], UploadRound(SEED, round=51))):
        with pytest.raises(InvalidCiphertext, match="not a sum of"):
            seeded.decryption_share(j.context, j.keys[1], data, SIZE, other, uploaders, [1, 2])
    with pytest.raises(InvalidValue, match="distinct members"):
        seeded.decryption_share(j.context, j.keys[1], data, SIZE, upload, [1, 1], [1, 2])
    good = shares(j, data, upload, [1, 2], [1, 2])
    with pytest.raises(InvalidCiphertext, match="two decryption shares"):
        seeded.combine(j.context, data, SIZE, [good[0], good[0]], upload, [1, 2])


def test_a_seeded_job_refuses_public_key_ciphertexts() -> None:
    """Its smudging is sized for seeded sums' smaller noise: a public-key sum would be under-flooded."""
    j = job(3, seeded=True)
    with pytest.raises(InvalidValue, match="seeded"):
        j.context.encrypt(np.ones(SIZE), 1.0)
    data, _, _ = uploads(j, UploadRound(SEED, round=60), [1, 2, 3])
    with pytest.raises(InvalidValue, match="seeded"):
        j.context.decryption_share(j.keys[1], data, SIZE, [1, 2])
    assert j.params.smudging_sigma < job(3).params.smudging_sigma / 9


def test_collusion_of_coordinator_and_t_minus_1_members_learns_nothing_of_an_honest_upload() -> None:
    """Coordinator: every upload and ``a_r``.  Colluders 1..t-1: their own secrets, key shares and every dealt
    share they received (sub-shares of the honest secret included).  Target: member 5's upload."""
    j = job(5, seeded=True)
    ring, q1, limbs = j.context.ring, j.context.ring.q(1), len(j.context.ring.moduli)
    honest = np.random.default_rng(7).normal(0, 1, SIZE)
    blob = seeded.encrypt(j.context, j.members[4], honest, 1.0, UploadRound(SEED, round=70))
    (ct,) = j.public.parse(blob, j.context.key_id, SIZE)
    c0, a = ring.read_ciphertext(ct)
    colluders = list(range(1, j.params.t))
    guesses = {
        "honest member's secret (control)": j.secret([5]),
        "colluders' own secrets": j.secret(colluders),
        "colluders' sub-shares of the honest secret as if t": sum(
            shamir.lagrange(ring, colluders, i, limbs) * j.keys[i].share_of([5]) for i in colluders) % j.q,
        "colluders' key shares as if t": sum(shamir.lagrange(ring, colluders, i, limbs) * j.keys[i].share_of(
            range(1, 6)) for i in colluders) % j.q,
    }
    corr = {}
    for name, key in guesses.items():
        plain = ring.plaintext((c0 + a * key[:1]) % q1, list(ct.parms_id()), ct.scale)
        corr[name] = correlation(j.context.decode([plain])[:SIZE], honest)
    assert corr.pop("honest member's secret (control)") > 0.999
    assert all(abs(c) < 0.06 for c in corr.values()), corr


@pytest.mark.parametrize("members", [3, 5])
def test_the_noise_of_a_seeded_sum_is_within_the_bound_the_smudging_is_sized_on(members: int) -> None:
    j = job(members, seeded=True)
    ring, q1 = j.context.ring, j.context.ring.q(1)
    upload, everyone = UploadRound(SEED, round=80), list(range(1, members + 1))
    data, expected, weight = uploads(j, upload, everyone, seed=8)
    (ct,) = j.context.parse_sum(data, SIZE)
    c0, c1 = ring.read_ciphertext(ct)
    (plain,) = j.context.encode(expected, weight)
    noise = np.array(ring.from_ntt((c0 + c1 * pow(members, -1, ring.moduli[0]) * j.secret(everyone)[:1]
                                    - ring.read_plaintext(plain, 1)) % q1), dtype=np.float64)
    assert j.params.noise_bound / 4 < np.linalg.norm(noise) < j.params.noise_bound


def test_the_coordinator_sends_c0_alone_and_members_rebuild_c1_from_the_seed() -> None:
    j = job(5, seeded=True)
    upload, uploaders = UploadRound(SEED, round=90), [1, 2, 3, 4, 5]
    data, expected, weight = uploads(j, upload, uploaders, seed=9)
    download = ThresholdContext(j.params, key_id=j.public.key_id).compress(data, SIZE)
    assert len(download) < 0.35 * len(data)
    full = seeded.expand(j.context, download, SIZE, upload, uploaders)
    vector, got_weight = seeded.combine(j.context, full, SIZE, shares(j, full, upload, uploaders, [2, 3, 4]),
                                        upload, uploaders)
    assert got_weight == pytest.approx(weight, abs=1e-4)  # weights are fractions under threshold keys: not rounded
    assert np.abs(vector - expected).max() <= 1e-4
    with pytest.raises(InvalidValue, match="c1 polynomials"):
        j.context.expand(download, SIZE)
    with pytest.raises(InvalidCiphertext, match="truncated"):
        seeded.expand(j.context, download[:-1], SIZE, upload, uploaders)



def test_the_sum_read_from_its_bytes_and_its_download_equal_what_seal_itself_reads_and_transforms() -> None:
    """The relay reads a folded sum in memory (SEAL's zstd inflated, ``ThresholdContext.read_sum``) and transforms
    it in numpy; SEAL's loader, its decryption under the keys 0 and 1 and its own inverse NTT give the same
    residues, bit for bit, and the compressed download rounds exactly SEAL's coefficients."""
    j = job(5, seeded=True)
    data, _, _ = uploads(j, UploadRound(SEED, round=91), [1, 2, 3, 4, 5], seed=4)
    coordinator = ThresholdContext(j.params, key_id=j.public.key_id)
    cts = coordinator.parse_sum(data, SIZE)
    read = coordinator.read_sum(data, SIZE)
    assert read.shape == (len(cts), 2, 1, coordinator.ring.n)
    for parts, ct in zip(read, cts, strict=True):
        assert all(np.array_equal(got, want) for got, want in zip(parts, coordinator.ring.read_parts(ct, 2),
                                                                  strict=True))
    k0, q = j.params.download_bits[0], coordinator.ring.moduli[0]
    lifted = coordinator.lift(coordinator.compress(data, SIZE), SIZE)[:, 0]
    for got, ct in zip(lifted, cts, strict=True):
        coordinator.evaluator.transform_from_ntt_inplace(ct)
        coefficients = np.array([ct.dyn_array().at(i) for i in range(coordinator.ring.n)], dtype=np.uint64)
        assert np.array_equal(got, switch_up(switch_down(coefficients, q, k0), q, k0))

def _reduced(q: int, ratio: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """A Lagrange-Gauss reduced basis of the lattice ``{(x, y): x = ratio * y mod q}`` (exact integers)."""
    b1, b2 = (q, 0), (ratio, 1)
    while True:
        if b1[0] ** 2 + b1[1] ** 2 > b2[0] ** 2 + b2[1] ** 2:
            b1, b2 = b2, b1
        norm, dot = b1[0] ** 2 + b1[1] ** 2, b1[0] * b2[0] + b1[1] * b2[1]
        mu = (2 * dot + norm) // (2 * norm)
        if mu == 0:
            return b1, b2
        b2 = (b2[0] - mu * b1[0], b2[1] - mu * b1[1])


def _short_solution(basis: tuple[tuple[int, int], tuple[int, int]], target: tuple[int, int]) -> tuple[int, int]:
    """``target`` less its nearest lattice point (Babai's rounding in the reduced basis): the short solution."""
    (a, b), (c, d) = basis
    det = a * d - b * c
    sign = 1 if det > 0 else -1
    x = (2 * sign * (target[0] * d - target[1] * c) + abs(det)) // (2 * abs(det))
    y = (2 * sign * (a * target[1] - b * target[0]) + abs(det)) // (2 * abs(det))
    return target[0] - x * a - y * c, target[1] - x * b - y * d


def test_two_shares_of_one_round_attempt_under_two_decryptor_sets_give_the_members_key_share_away() -> None:
    """Why a member never re-shares a round attempt for a new decryptor set, even for the same uploaders (the
    "re-pick the decryptors, keep the uploads" retry): its shares ``d = a_r lambda sigma + e`` and
    ``d' = a_r lambda' sigma + e'`` give ``lambda' d - lambda d' = lambda' e - lambda e'`` mod q to anyone, and
    for a set T' of the relay's choosing the 2-dimensional lattice of that equation has no vector near the
    flooding's size, so rounding to it returns ``e`` itself: whoever sees both shares strips the flooding and reads
    ``sigma``, the member's Shamir share of the uploaders' secret sum, in every coefficient (the relay alone for
    unmasked shares; with one colluding member's group key for the round path's masked ones)."""
    j = job(30, seeded=True)
    ring, t, q = j.context.ring, j.params.t, j.context.ring.moduli[0]
    member, picker = 2, random.Random(30)
    others = [m for m in range(1, 31) if m != member]
    first = sorted([member, *picker.sample(others, t - 1)])

    def lagrange(decryptors: list[int]) -> int:
        return int(shamir.lagrange(ring, decryptors, member, 1)[0, 0])

    def shortest(decryptors: list[int]) -> int:
        (x, y), _ = _reduced(q, lagrange(first) * pow(lagrange(decryptors), -1, q) % q)
        return x * x + y * y

    second = max((sorted([member, *picker.sample(others, t - 1)]) for _ in range(300)), key=shortest)
    assert shortest(second) > (16 * j.params.smudging_sigma) ** 2  # the lattice has no vector near the flooding
    upload, uploaders, key = UploadRound(SEED, round=45), list(range(1, 31)), j.keys[member]
    bases = seeded.reference_polys(j.context, upload, 1)
    secret = key.share_of(uploaders)
    d = share_polys(ring, seeded.round_share(j.context, key, bases, upload, uploaders, first), 1, 1)[3][0]
    with pytest.raises(InvalidValue, match="already made a decryption share"):
        seeded.round_share(j.context, key, bases, upload, uploaders, second)
    relaxed = key.flooded(bases, secret, second, b"\0" * 32, upload.label + bytes(second))  # a (round, T) record
    d2 = share_polys(ring, relaxed, 1, 1)[3][0]
    lam, lam2 = lagrange(first), lagrange(second)
    combined = (lam2 * np.asarray(d, dtype=object) - lam * np.asarray(d2, dtype=object)) % q  # lam' e - lam e'
    basis, inverse = _reduced(q, lam * pow(lam2, -1, q) % q), pow(lam2, -1, q)
    flooding = [_short_solution(basis, (int(z) * inverse % q, 0))[0]
                for z in ring.from_ntt_residues(combined.astype(np.uint64))]
    stripped = (np.asarray(d, dtype=object) - ring.to_ntt(np.array(flooding), 1)) % q  # a_r lam sigma
    recovered = [int(v) * pow(int(a) * lam % q, -1, q) % q for v, a in zip(stripped[0], bases[0][0], strict=True)]
    assert recovered == [int(v) for v in np.asarray(secret)[0]]
    naive = [int(v) * pow(int(a) * lam % q, -1, q) % q for v, a in zip(d[0], bases[0][0], strict=True)]
    assert sum(a == b for a, b in zip(naive, recovered, strict=True)) < 10  # control: one share alone hides it
