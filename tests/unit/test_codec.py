"""The participant's payload codecs on real CKKS keys: what leaves a site and how it rebuilds global versions."""

from __future__ import annotations

import numpy as np
import pytest

from fedprompt.crypto.ckks import ENCODING as CKKS
from fedprompt.crypto.ckks import CkksParams, PublicContext, SecretContext
from fedprompt.crypto.errors import InvalidCiphertext
from fedprompt.crypto.gram import add_weight
from fedprompt.errors import InvalidUpdate
from fedprompt.participant.codec import (
    EncryptedPart,
    LevelledCodec,
    PartCodec,
    PayloadCodec,
    PlainPart,
    VectorCodec,
    job_codec,
)
from fedprompt.protocol import Payload
from fedprompt.wire.levels import EXPERT, GLOBAL, encoding, pack, unpack
from fedprompt.wire.payload import FLOAT32, encode_vector

PARAMS = CkksParams()
JOB = "job-1"
SIZE = 10
LEVELS = {GLOBAL: 6, EXPERT: 3}


class Served:
    """What the coordinator serves: one payload per global version; records downloads and kept versions."""

    def __init__(self) -> None:
        self.versions: dict[int, Payload] = {}
        self.downloads: list[int] = []
        self.kept: list[tuple[int, np.ndarray]] = []

    def download(self, version: int) -> Payload:
        self.downloads.append(version)
        return self.versions[version]

    def keep(self, version: int, vector: np.ndarray) -> None:
        self.kept.append((version, vector))

    def vector_codec(self, part: PartCodec) -> VectorCodec:
        return VectorCodec(part, JOB, SIZE, self.download, self.keep)

    def levelled_codec(self, part: PartCodec) -> LevelledCodec:
        return LevelledCodec(part, JOB, dict(LEVELS), self.download, self.keep)


def summed(public: PublicContext, datas: list[bytes], size: int, weight: float | None = None) -> bytes:
    """The coordinator's encrypted sum of ``datas`` (plus a plaintext weight, as under a Gram defence)."""
    total = public.new_sum(size)
    for data in datas:
        total.add(total.parse(data))
    if weight is not None:
        assert total.total is not None
        add_weight(public, total.total, size, weight)
    return total.to_bytes()


def vectors(seed: int, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 0.1, size).astype(np.float32)


def test_plain_update_round_trips_as_float32() -> None:
    served = Served()
    codec = served.vector_codec(PlainPart())
    delta = vectors(0)
    update = codec.encode_update(3, delta, 40)
    assert (update.job_id, update.round, update.encoding, update.vector_size, update.num_examples) == (
        JOB, 3, FLOAT32, SIZE, 40)
    assert update.data == encode_vector(delta)
    initial = codec.initial(delta)
    assert (initial.round, initial.num_examples, initial.data) == (0, 0, update.data)
    served.versions[5] = update  # a plain version is served whole: only the version asked for is fetched
    assert np.array_equal(codec.global_vector(5), delta) and served.downloads == [5] and not served.kept
    codec.global_vector(5)
    assert served.downloads == [5]  # the newest version is kept in memory


def test_plain_download_refuses_a_wrong_encoding() -> None:
    served = Served()
    served.versions[1] = Payload(JOB, 1, CKKS, SIZE, encode_vector(vectors(0)))
    with pytest.raises(InvalidUpdate, match="encoding"):
        served.vector_codec(PlainPart()).global_vector(1)


def test_encrypted_update_carries_weight_times_delta_and_the_weight(secret: SecretContext) -> None:
    codec = Served().vector_codec(EncryptedPart(lambda: secret, gram_defence=False))
    delta = vectors(1)
    update = codec.encode_update(2, delta, 7)
    assert (update.encoding, update.vector_size, update.num_examples) == (CKKS, SIZE, 7)
    total, weight = secret.decrypt(update.data, SIZE)
    assert weight == 7 and np.allclose(total, 7 * delta.astype(np.float64), atol=1e-4)
    initial = codec.initial(delta)
    total, weight = secret.decrypt(initial.data, SIZE)
    assert (initial.num_examples, weight) == (0, 1) and np.allclose(total, delta, atol=1e-5)


def test_gram_defence_encrypts_zero_weight_in_updates_but_one_in_the_initial_prompt(
        secret: SecretContext, public: PublicContext) -> None:
    codec = Served().vector_codec(EncryptedPart(lambda: secret, gram_defence=True))
    delta = vectors(2)
    update = codec.encode_update(1, delta, 12)
    assert update.num_examples == 12  # the coordinator adds the header's weight to the encrypted sum
    with pytest.raises(InvalidCiphertext, match="weight"):
        secret.decrypt(update.data, SIZE)  # the weight slot holds 0
    total, weight = secret.decrypt(summed(public, [update.data], SIZE, weight=12.0), SIZE)
    assert weight == 12 and np.allclose(total / weight, delta, atol=1e-5)
    total, weight = secret.decrypt(codec.initial(delta).data, SIZE)
    assert weight == 1 and np.allclose(total, delta, atol=1e-5)


def encrypted_history(public: PublicContext, codec: PayloadCodec, rounds: int) -> tuple[dict[int, Payload], list[
        np.ndarray]]:
    """An initial prompt and ``rounds`` rounds of two sites' updates, served as the coordinator sums them;
    with the plaintext FedAvg prompts beside them."""
    initial = vectors(10)
    versions = {0: codec.initial(initial)}
    plain = [initial.astype(np.float64)]
    for round_ in range(1, rounds + 1):
        deltas, weights = [vectors(100 + 2 * round_), vectors(101 + 2 * round_)], [30, 50]
        datas = [codec.encode_update(round_, d, w).data for d, w in zip(deltas, weights, strict=True)]
        versions[round_] = Payload(JOB, round_, CKKS, SIZE, summed(public, datas, SIZE))
        plain.append(plain[-1] + sum(w * d.astype(np.float64) for d, w in zip(deltas, weights, strict=True)) / 80)
    return versions, plain


def test_encrypted_globals_are_rebuilt_in_float32_steps(secret: SecretContext, public: PublicContext) -> None:
    served = Served()
    codec = served.vector_codec(EncryptedPart(lambda: secret, gram_defence=False))
    served.versions, plain = encrypted_history(public, codec, rounds=4)
    expected, step = [], np.zeros(SIZE, np.float32)
    for version in range(5):  # each version rounded to float32 before the next aggregate is added
        total, weight = secret.decrypt(served.versions[version].data, SIZE)
        step = (total / weight if version == 0 else step.astype(np.float64) + total / weight).astype(np.float32)
        expected.append(step)

    rebuilt = codec.global_vector(4)  # in one go, as after a restart
    assert rebuilt.dtype == np.float32 and np.array_equal(rebuilt, expected[4])
    assert np.allclose(rebuilt, plain[4], atol=1e-4)
    assert [v for v, _ in served.kept] == [0, 1, 2, 3, 4]
    assert all(np.array_equal(kept, want) for (_, kept), want in zip(served.kept, expected, strict=True))

    stepwise = Served()
    stepwise.versions = served.versions
    other = stepwise.vector_codec(EncryptedPart(lambda: secret, gram_defence=False))
    for version in range(5):  # another site, one version at a time, gets the same bits
        assert np.array_equal(other.global_vector(version), expected[version])
    assert stepwise.downloads == [0, 1, 2, 3, 4]  # each step starts from the version before it
    assert np.array_equal(other.global_vector(2), expected[2]) and stepwise.downloads[5:] == [0, 1, 2]


def test_levelled_plain_container_round_trips() -> None:
    served = Served()
    codec = served.levelled_codec(PlainPart())
    vector = vectors(3, sum(LEVELS.values()))
    update = codec.encode_update(1, vector, 9)
    assert (update.encoding, update.vector_size, update.num_examples) == (encoding(FLOAT32), 9, 9)
    parts = unpack(update.data)
    assert list(parts) == [GLOBAL, EXPERT] and parts[GLOBAL] == (6, encode_vector(vector[:6]))
    served.versions[1] = update
    assert np.array_equal(codec.global_vector(1), vector)


def test_levelled_plain_version_refuses_an_empty_part() -> None:
    served = Served()
    served.versions[1] = Payload(JOB, 1, encoding(FLOAT32), 9, pack(
        {GLOBAL: (6, encode_vector(vectors(4, 6))), EXPERT: (3, b"")}))
    with pytest.raises(InvalidUpdate):
        served.levelled_codec(PlainPart()).global_vector(1)


def test_levelled_encrypted_parts_each_carry_their_weight(secret: SecretContext) -> None:
    codec = Served().levelled_codec(EncryptedPart(lambda: secret, gram_defence=False))
    vector = vectors(5, 9)
    update = codec.encode_update(2, vector, 4)
    assert (update.encoding, update.vector_size, update.num_examples) == (encoding(CKKS), 9, 4)
    parts = unpack(update.data)
    for (name, (size, data)), want in zip(parts.items(), (vector[:6], vector[6:]), strict=True):
        total, weight = secret.decrypt(data, size)
        assert (name, weight) in ((GLOBAL, 4), (EXPERT, 4)) and np.allclose(total, 4 * want, atol=1e-4)


def test_levelled_encrypted_empty_expert_part_means_unchanged(secret: SecretContext, public: PublicContext) -> None:
    served = Served()
    codec = served.levelled_codec(EncryptedPart(lambda: secret, gram_defence=False))
    served.versions[0] = codec.initial(vectors(6, 9))
    update = unpack(codec.encode_update(1, vectors(7, 9), 5).data)
    step_global = summed(public, [update[GLOBAL][1]], 6)
    served.versions[1] = Payload(JOB, 1, encoding(CKKS), 9, pack({GLOBAL: (6, step_global), EXPERT: (3, b"")}))

    before = codec.global_vector(0)
    after = codec.global_vector(1)
    total, weight = secret.decrypt(step_global, 6)
    assert np.array_equal(after[6:], before[6:])  # the cohort's expert prompt did not change
    assert np.array_equal(after[:6], (before[:6].astype(np.float64) + total / weight).astype(np.float32))
    assert np.allclose(after[:6], vectors(6, 9)[:6] + vectors(7, 9)[:6], atol=1e-4)
    assert [v for v, _ in served.kept] == [0, 1]


def test_levelled_initial_prompt_needs_every_level(secret: SecretContext) -> None:
    served = Served()
    codec = served.levelled_codec(EncryptedPart(lambda: secret, gram_defence=False))
    whole = unpack(codec.initial(vectors(8, 9)).data)
    served.versions[0] = Payload(JOB, 0, encoding(CKKS), 9, pack({GLOBAL: whole[GLOBAL], EXPERT: (3, b"")}))
    with pytest.raises(InvalidUpdate, match="lacks its expert level"):
        codec.global_vector(0)


def test_job_codec_is_chosen_from_the_job() -> None:
    served = Served()
    plain = job_codec(False, JOB, SIZE, None, None, served.download, served.keep)
    assert isinstance(plain, VectorCodec) and plain.encoding == FLOAT32 and plain.size == SIZE
    levelled = job_codec(False, JOB, 9, None, dict(LEVELS), served.download, served.keep)
    assert isinstance(levelled, LevelledCodec) and levelled.encoding == encoding(FLOAT32) and levelled.size == 9
