"""FedBPT pieces without sockets: the seeded projection, the aggregation maths, config checks, the learner."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedprompt.config import JobConfig, dump_toml, parse_toml
from fedprompt.coordinator.aggregation import (
    Contribution,
    FedAvg,
    FedBPTLinear,
    fedbpt_global_distribution,
    job_aggregator,
    make_aggregator,
)
from fedprompt.coordinator.runtime import JobRuntime
from fedprompt.coordinator.store import Store
from fedprompt.errors import ConfigError, InvalidUpdate
from fedprompt.participant.blackbox import projection
from fedprompt.participant.learners import local_learner
from fedprompt.protocol import Payload
from fedprompt.wire.payload import FLOAT32, encode_vector, pack_search_state, search_state
from tests.support import REPO, blackbox_job, toy_examples, toy_sites

ARGS = (7, 40, 96, 0.05, 1.5)  # job seed, d, prompt floats, embedding std, sigma


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype="<f4").tobytes()).hexdigest()


def test_projection_is_identical_across_processes_for_a_job() -> None:
    code = ("import hashlib, numpy as np; from fedprompt.participant.blackbox import projection; "
            f"a = projection{ARGS}; print(hashlib.sha256(np.ascontiguousarray(a, dtype='<f4').tobytes()).hexdigest())")
    other = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                           env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert other.stdout.strip() == digest(projection(*ARGS))
    assert digest(projection(8, *ARGS[1:])) != digest(projection(*ARGS)), "another job seed, another matrix"


def test_projection_follows_bbt_scaling_to_the_embedding_statistics() -> None:
    seed, d, dim, std, sigma = ARGS
    a = projection(seed, d, 4000, std, sigma)
    assert a.shape == (4000, d) and a.dtype == np.float32
    assert a.std() == pytest.approx(std / (np.sqrt(d) * sigma), rel=0.02)
    z = np.random.default_rng(0).normal(0.0, sigma, size=(200, d))
    assert (z @ a.T).std() == pytest.approx(std, rel=0.05), "z ~ N(0, sigma^2 I) gives embedding-sized offsets"
    with pytest.raises(ConfigError):
        projection(seed, d, dim, float("nan"), sigma)


def test_fedbpt_merges_local_distributions_by_moment_matching() -> None:
    means = np.array([[0.0, 0.0], [2.0, 4.0]])
    mean, sigma = fedbpt_global_distribution(means, np.array([1.0, 3.0]), [1, 3])
    np.testing.assert_allclose(mean, [1.5, 3.0])
    spread = (0.25 * (1.5**2 + 3.0**2) + 0.75 * (0.5**2 + 1.0**2)) / 2
    assert sigma == pytest.approx(np.sqrt(0.25 * 1 + 0.75 * 9 + spread))
    same, s = fedbpt_global_distribution(np.ones((3, 4)), np.full(3, 0.5), [1, 1, 1])
    assert s == pytest.approx(0.5) and np.allclose(same, 1.0), "agreeing participants keep their distribution"
    with pytest.raises(InvalidUpdate):
        fedbpt_global_distribution(means, np.array([1.0, 0.0]), [1, 1])


def test_fedbpt_step_size_never_grows_over_rounds() -> None:
    glob = pack_search_state(np.zeros(2), 1.0)
    apart = [pack_search_state(np.array([-3.0, 3.0]), 0.9), pack_search_state(np.array([3.0, -3.0]), 0.9)]
    result = make_aggregator("fedbpt").aggregate(glob, [Contribution(f"p{i}", 1, v - glob) for i, v in enumerate(apart)])
    assert result.metrics["sigma_matched"] > 1.0, "disagreeing participants widen the matched distribution"
    assert search_state(result.vector)[1] == 1.0 and result.metrics["sigma"] == 1.0
    close = [pack_search_state(np.array([0.1, 0.0]), 0.4), pack_search_state(np.array([0.0, 0.1]), 0.6)]
    shrunk = make_aggregator("fedbpt").aggregate(glob, [Contribution(f"p{i}", 1, v - glob) for i, v in enumerate(close)])
    assert shrunk.metrics["sigma_matched"] < 1.0
    assert search_state(shrunk.vector)[1] == pytest.approx(shrunk.metrics["sigma_matched"])


def test_linear_variant_is_the_weighted_average_of_means_and_step_sizes() -> None:
    glob = pack_search_state(np.zeros(3), 1.0)
    local = [pack_search_state(np.array([1.0, 2.0, 3.0]), 0.5), pack_search_state(np.array([3.0, 2.0, 1.0]), 1.5)]
    contributions = [Contribution(f"p{i}", w, v - glob) for i, (v, w) in enumerate(zip(local, [1, 3], strict=True))]
    result = make_aggregator("fedbpt_linear").aggregate(glob, contributions)
    np.testing.assert_allclose(result.vector, 0.25 * local[0] + 0.75 * local[1], rtol=1e-6)
    assert isinstance(make_aggregator("fedbpt_linear"), FedAvg), "the same fold the encrypted path computes"
    with pytest.raises(InvalidUpdate):
        FedBPTLinear().check(glob, pack_search_state(np.zeros(3), -1.0))


@pytest.mark.parametrize(("change", "key"), [
    ({"blackbox": {"enabled": True}, "model": {"train_head": False}}, "job.aggregator"),
    ({"blackbox": {"enabled": True}, "job": {"aggregator": "fedbpt"}}, "model.train_head"),
    ({"job": {"aggregator": "fedbpt_linear"}}, "job.aggregator"),
    ({"blackbox": {"enabled": True}, "job": {"aggregator": "fedbpt"}, "model": {"train_head": False},
      "he": {"enabled": True, "mode": "single_key"}}, "job.aggregator"),
    ({"blackbox": {"enabled": True}, "job": {"aggregator": "fedbpt"}, "model": {"train_head": False},
      "dp": {"enabled": True}}, "dp.enabled"),
    ({"blackbox": {"population": 1}}, "blackbox.population"),
    ({"blackbox": {"sigma": 0}}, "blackbox.sigma"),
    ({"blackbox": {"local_iterations": 0}}, "blackbox.local_iterations"),
])
def test_blackbox_config_is_validated_naming_the_key(change: dict, key: str) -> None:
    """Section checks at load, the aggregator's kind (black-box, linear under HE) when the coordinator
    creates the job: either way the bad key is named."""
    import tomli_w

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        job_aggregator(parse_toml(tomli_w.dumps(change), JobConfig))


def test_blackbox_learner_searches_through_the_model_host_only(tiny_encoder_dir: Path) -> None:
    config = blackbox_job(tiny_encoder_dir)
    assert parse_toml(dump_toml(config), JobConfig).mode == "blackbox"
    from fedprompt.models import load_backbone

    backbone = load_backbone(str(tiny_encoder_dir))
    learner = local_learner(config, backbone)
    start = learner.initial_vector()
    assert start.shape == (13,) and start[-1] == config.blackbox.sigma and not start[:-1].any()
    examples = toy_examples(10, 0)
    labels = [int(e.label == "pos") for e in examples]
    local, result = learner.train(start, examples, labels, seed=3)
    bb = config.blackbox
    assert local.shape == (13,) and local[-1] > 0 and np.isfinite(local).all() and result.steps == 2
    assert learner.usage()["model_queries"] == bb.local_iterations * bb.population * bb.batch_size
    again, _ = local_learner(config, backbone).train(start, examples, labels, seed=3)
    np.testing.assert_array_equal(local, again)
    metrics = learner.evaluate(local, examples, labels)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["loss"] > 0
    with pytest.raises(InvalidUpdate):
        learner.train(pack_search_state(np.zeros(12), 0.0), examples, labels, seed=3)


def test_round_refuses_a_search_state_with_non_positive_step_size(tiny_encoder_dir: Path) -> None:
    config = blackbox_job(tiny_encoder_dir, rounds=1, participants_per_round=2, min_participants=2)
    job = JobRuntime("j", config, dump_toml(config), Store(":memory:"))
    for p in ("a", "b"):
        job.join(p, 10, 5, 13)
    job.submit("a", Payload("j", 0, FLOAT32, 13, encode_vector(pack_search_state(np.zeros(12), 1.0))))
    job.start()
    job.tick()
    bad = pack_search_state(np.full(12, 0.1), -1.5)  # delta: sigma 1.0 - 1.5 < 0
    with pytest.raises(InvalidUpdate, match="step size"):
        job.submit("a", Payload("j", 1, FLOAT32, 13, encode_vector(bad), num_examples=10))
    assert job.open is not None and not job.open.reported, "the refused update left the round intact"
    good = pack_search_state(np.full(12, 0.1), -0.5)
    for p in ("a", "b"):
        job.submit(p, Payload("j", 1, FLOAT32, 13, encode_vector(good), num_examples=10))
    assert job.latest_version() == 1
    assert dataclasses.asdict(job.view())["rounds"][0]["metrics"]["sigma"] == pytest.approx(0.5)


def test_encrypted_linear_fedbpt_round_equals_the_plaintext_one(tiny_encoder_dir: Path) -> None:
    """FedBPT's HE-compatible variant through the real CKKS path: the sites decrypt a global search state that
    scores (accuracy and loss of version 1, evaluated by every site on its own copy) like the plaintext linear
    aggregation of the same, identically seeded local searches."""
    from fedprompt.app.simulate import simulate
    from fedprompt.config import HESection

    plain = blackbox_job(tiny_encoder_dir, aggregator="fedbpt_linear", rounds=1)
    encrypted = dataclasses.replace(plain, he=HESection(enabled=True, mode="single_key"))
    reports = [simulate(config, toy_sites(3)) for config in (plain, encrypted)]
    for report in reports:
        assert report["state"] == "done" and report["mode"] == "blackbox" and report["rounds"][0]["updates"] == 3
    (p,), (h,) = (r["rounds"] for r in reports)
    assert h["accuracy"] == p["accuracy"] and h["loss"] == pytest.approx(p["loss"], rel=1e-4)
    assert h["bytes_up"] > p["bytes_up"], "the encrypted run really shipped ciphertexts"
