"""Threshold CKKS with real SEAL ciphertexts: collective keys, t-of-n decryption, refusals and a collusion
harness (the coordinator's ciphertexts plus t - 1 members' secrets against one honest member's update)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import tenseal.sealapi as seal

from fedprompt.crypto import shamir
from fedprompt.crypto.errors import InvalidCiphertext, InvalidValue, ParameterError
from fedprompt.crypto.rns import Poly
from fedprompt.crypto.threshold import KeyShare, ThresholdContext, ThresholdParams
from tests.thresholds import SIZE, Job, correlation, job


def aggregate(j: Job, seed: int = 0) -> tuple[bytes, np.ndarray, float]:
    """Every member encrypts ``w_i * x_i`` and ``w_i`` with the collective key; the coordinator folds."""
    rng = np.random.default_rng(seed)
    total, expected, weight = j.public.new_sum(SIZE), np.zeros(SIZE), 0.0
    for _ in j.members:
        update, w = rng.normal(0, 0.1, SIZE), float(rng.integers(1, 20))
        total.add(total.parse(j.context.encrypt(update * w, w)))
        expected += update * w
        weight += w
    return total.to_bytes(), expected, weight


def shares_of(j: Job, data: bytes, decryptors: list[int]) -> list[bytes]:
    return [j.context.decryption_share(j.keys[d], data, SIZE, decryptors) for d in decryptors]


def test_default_parameters_meet_the_standard_with_a_majority_threshold() -> None:
    params = ThresholdParams(members=5)
    params.check()
    assert params.ckks.security_bits >= 128
    assert params.t == 3 and ThresholdParams(members=10).t == 6
    assert params.describe()["threshold"] == 3
    assert params.error_estimate < 1e-4


@pytest.mark.parametrize("change,key", [
    ({"threshold": 6}, "threshold.threshold"),
    ({"threshold": 1}, "threshold.threshold"),
    ({"members": 1}, "threshold.members"),
    ({"max_decryptions": 0}, "threshold.max_decryptions"),
    ({"scale_bits": 30}, "threshold.scale_bits"),
    ({"coeff_mod_bit_sizes": (60, 60)}, "threshold.coeff_mod_bit_sizes"),
])
def test_bad_parameters_name_their_key(change: dict[str, object], key: str) -> None:
    with pytest.raises(ParameterError, match=key):
        replace(ThresholdParams(members=5), **change).check()  # type: ignore[arg-type]


@pytest.mark.parametrize("members,decryptors", [(3, [1, 2]), (3, [2, 3]), (5, [1, 3, 5]), (5, [2, 4, 5]),
                                                (5, [1, 2, 3, 4, 5])])
def test_any_t_members_decrypt_the_aggregate_with_the_others_dropped(members: int, decryptors: list[int]) -> None:
    j = job(members)
    data, expected, weight = aggregate(j)
    vector, got_weight = j.context.combine(data, SIZE, shares_of(j, data, decryptors))
    assert got_weight == pytest.approx(weight, abs=1e-4)  # weights are fractions under threshold keys: not rounded
    assert np.abs(vector - expected).max() <= 1e-4


def test_a_retry_after_a_dropout_decrypts_a_rerandomised_sum_and_never_the_same_one_twice() -> None:
    """Member 3 of the set {1, 2, 3} drops after 1 and 2 answered; the coordinator retries with {1, 2, 4}."""
    j = job(5)
    data, expected, weight = aggregate(j, seed=5)
    first = [j.context.decryption_share(j.keys[d], data, SIZE, [1, 2, 3]) for d in (1, 2)]
    assert len(first) == 2
    with pytest.raises(InvalidValue, match="already made a decryption share"):
        j.context.decryption_share(j.keys[1], data, SIZE, [1, 2, 4])
    retry = j.context.rerandomise(data, SIZE)
    (before,), (after,) = j.context.parse_sum(data, SIZE), j.context.parse_sum(retry, SIZE)
    assert not np.array_equal(j.context.ring.read_ciphertext(before)[1], j.context.ring.read_ciphertext(after)[1])
    vector, got_weight = j.context.combine(retry, SIZE, shares_of(j, retry, [1, 2, 4]))
    assert got_weight == pytest.approx(weight, abs=1e-4)  # weights are fractions under threshold keys: not rounded
    assert np.abs(vector - expected).max() <= 1e-4


def test_fewer_than_t_members_cannot_ask_or_combine() -> None:
    j = job(5)
    data, _, _ = aggregate(j)
    with pytest.raises(InvalidValue, match="3 or more"):
        j.context.decryption_share(j.keys[1], data, SIZE, [1, 2])
    shares = shares_of(j, data, [2, 3, 4])
    with pytest.raises(InvalidValue, match="every member of the set"):
        j.context.combine(data, SIZE, shares[:2])


def test_wrong_duplicate_or_foreign_shares_are_refused() -> None:
    j = job(3)
    data, _, _ = aggregate(j, seed=1)
    other, _, _ = aggregate(j, seed=2)
    good = shares_of(j, data, [1, 2])
    with pytest.raises(InvalidCiphertext, match="other ciphertexts"):
        j.context.combine(data, SIZE, [good[0], shares_of(j, other, [1, 2])[1]])
    with pytest.raises(InvalidCiphertext, match="two decryption shares"):
        j.context.combine(data, SIZE, [good[0], good[0]])
    with pytest.raises(InvalidCiphertext, match="different decryptor sets"):
        j.context.combine(data, SIZE, [good[0], j.context.decryption_share(j.keys[3], data, SIZE, [1, 3])])
    with pytest.raises(InvalidCiphertext, match="bytes of polynomials"):
        j.context.combine(data, SIZE, [good[0], good[1][:-8]])
    forged = bytearray(good[1])
    forged[-8 * 4096 :] = np.random.default_rng(3).integers(0, 2**50, 4096, dtype=np.uint64).tobytes()
    with pytest.raises(InvalidCiphertext, match="decrypted (weight is not a positive number|values exceed what a sum can hold)"):
        j.context.combine(data, SIZE, [good[0], bytes(forged)])
    forged[-8:] = np.uint64(2**63).tobytes()
    with pytest.raises(InvalidCiphertext, match="beyond its prime"):
        j.context.combine(data, SIZE, [good[0], bytes(forged)])


def test_dealt_shares_are_checked_for_recipient_and_completeness() -> None:
    j = job(3)
    dealt = {m.index: m.deal() for m in j.members}
    with pytest.raises(InvalidCiphertext, match="not for member 1"):
        KeyShare(j.params, j.context.ring, 1, {i: dealt[i][2] for i in dealt})
    with pytest.raises(InvalidValue, match="each of the 3 members"):
        KeyShare(j.params, j.context.ring, 1, {i: dealt[i][1] for i in (1, 2)})


def test_no_encryption_before_the_collective_key() -> None:
    with pytest.raises(InvalidValue, match="no collective public key"):
        ThresholdContext(ThresholdParams(members=3, seeded_uploads=False)).encrypt(np.zeros(4), 1.0)
    with pytest.raises(InvalidValue, match="all 3 members"):
        ThresholdContext(ThresholdParams(members=3)).set_public_key(job(3).members[0]._secret, [])


def test_t_shares_rebuild_the_collective_secret_and_t_minus_1_do_not() -> None:
    j = job(5)
    ring, q = j.context.ring, j.q
    limbs = len(ring.moduli)

    def rebuild(indices: list[int]) -> Poly:
        return sum(shamir.lagrange(ring, indices, i, limbs) * j.keys[i]._share for i in indices) % q

    secret = j.secret([1, 2, 3, 4, 5])
    assert np.array_equal(rebuild([1, 4, 5]), secret)
    assert not np.array_equal(rebuild([1, 4]), secret)
    with pytest.raises(ParameterError, match="distinct positive"):
        shamir.lagrange(ring, [1, 1, 2], 1, limbs)


def test_collusion_of_coordinator_and_t_minus_1_members_learns_nothing_of_an_honest_update() -> None:
    """Coordinator: every ciphertext.  Colluders 1..t-1: their own secrets, their key shares and every dealt
    share they received.  Target: member 5's update.  Each attack decrypts member 5's ciphertext with the best
    key the coalition can form; a control with the whole key shows the harness would see a leak."""
    j = job(5)
    ring, q1 = j.context.ring, j.context.ring.q(1)
    honest = np.random.default_rng(7).normal(0, 1, SIZE)
    (ct,) = j.context.parse_sum(j.context.encrypt(honest, 1.0), SIZE)
    c0, c1 = ring.read_ciphertext(ct)
    colluders = list(range(1, j.params.t))
    limbs = len(ring.moduli)
    guesses = {
        "collective secret (control)": j.secret([1, 2, 3, 4, 5]),
        "colluders' own secrets": j.secret(colluders),
        "colluders' key shares as if t": sum(shamir.lagrange(ring, colluders, i, limbs) * j.keys[i]._share
                                             for i in colluders) % j.q,
    }
    corr = {}
    for name, key in guesses.items():
        plain = ring.plaintext((c0 + c1 * key[:1]) % q1, list(ct.parms_id()), ct.scale)
        corr[name] = correlation(j.context.decode([plain])[:SIZE], honest)
    assert corr.pop("collective secret (control)") > 0.999
    assert all(abs(c) < 0.06 for c in corr.values()), corr


@pytest.mark.parametrize("members", [3, 5])
def test_the_noise_the_smudging_hides_is_within_its_bound(members: int) -> None:
    """The smudging width rests on ``noise_bound``: the l2 norm of a real aggregate's noise, measured with the
    collective secret, lies below it and within a factor 4 of it (the bound is neither wrong nor loose)."""
    j = job(members)
    ring, q1 = j.context.ring, j.context.ring.q(1)
    total, plains = None, np.zeros((1, ring.n), dtype=object)
    rng = np.random.default_rng(6)
    for _ in j.members:
        (plain,) = j.context.encode(rng.normal(0, 1, SIZE), 1.0)
        ct = seal.Ciphertext()
        j.context.encryptor.encrypt(plain, ct)
        plains = plains + ring.read_plaintext(plain, 1)
        if total is None:
            total = ct
        else:
            j.context.evaluator.add_inplace(total, ct)
    assert total is not None
    c0, c1 = ring.read_ciphertext(total)
    noise = np.array(ring.from_ntt((c0 + c1 * j.secret(list(range(1, members + 1)))[:1] - plains) % q1),
                     dtype=np.float64)
    assert j.params.noise_bound / 4 < np.linalg.norm(noise) < j.params.noise_bound


def test_a_decryption_share_is_flooded_with_smudging_noise() -> None:
    j = job(3)
    data, _, _ = aggregate(j)
    (ct,) = j.context.parse_sum(data, SIZE)
    share = shares_of(j, data, [1, 2])[0]
    ring = j.context.ring
    _, c1 = ring.read_ciphertext(ct)
    exact = c1 * shamir.lagrange(ring, [1, 2], 1, 1) * j.keys[1]._share[:1] % ring.q(1)
    flood = np.frombuffer(share, dtype=np.uint64, offset=len(share) - 8 * ring.n).astype(object)
    noise = np.array(ring.from_ntt(((flood - exact) % ring.q(1)).reshape(1, -1)), dtype=np.float64)
    assert abs(noise.mean()) < 0.1 * j.params.smudging_sigma
    assert noise.std() == pytest.approx(j.params.smudging_sigma, rel=0.05)


@pytest.mark.parametrize("members", [3, 5])
def test_coordinator_compresses_the_aggregate_without_a_key_and_it_still_decrypts(members: int) -> None:
    j = job(members)
    data, expected, weight = aggregate(j, seed=4)
    coordinator = ThresholdContext(j.params, key_id=j.public.key_id)
    download = coordinator.compress(data, SIZE)
    assert len(download) < 0.66 * len(data)
    full = j.context.expand(download, SIZE)
    decryptors = list(range(1, j.params.t + 1))
    vector, got_weight = j.context.combine(full, SIZE, shares_of(j, full, decryptors))
    assert got_weight == pytest.approx(weight, abs=1e-4)  # weights are fractions under threshold keys: not rounded
    assert np.abs(vector - expected).max() <= 1e-4
    with pytest.raises(InvalidCiphertext, match="truncated"):
        j.context.expand(download[:-1], SIZE)
    with pytest.raises(InvalidCiphertext, match="under this job's key"):
        ThresholdContext(j.params, key_id=bytes(32)).expand(download, SIZE)
    with pytest.raises(InvalidCiphertext, match="expected 10"):
        j.context.expand(download, 10)


def test_cost_measurement_runs_the_whole_path() -> None:
    from fedprompt.crypto.threshold_costs import measure

    figures = measure(3, 300)
    assert figures["threshold"] == 2 and figures["security_bits"] >= 128
    assert figures["max_abs_error_sum"] <= 1e-4
    assert figures["aggregate_bytes"] > figures["upload_bytes"] > figures["download_bytes"] > 300 * 4
    assert all(figures[key] > 0 for key in ("encrypt_s", "partial_decrypt_s", "combine_s"))
