"""Pseudo-label augmentation (AUG-FedPrompt): selection rules, gold kept out of training, runtime hook, config."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedprompt.app.simulate import simulate
from fedprompt.config import AugmentSection, JobConfig, dump_toml, parse_toml
from fedprompt.data.datasets import Example
from fedprompt.data.shards import DataPlan, PartitionSpec, SiteData, prepare, split_sites
from fedprompt.errors import ConfigError
from fedprompt.models import build_classifier, load_backbone
from fedprompt.models.classifier import PromptClassifier
from fedprompt.participant.fewshot import PseudoLabeller, select_confident
from tests.support import tiny_job, toy_examples, toy_sites, write_toy_dataset

PROBS = np.array([
    [0.95, 0.05],  # 0: class 0, confident
    [0.60, 0.40],  # 1: class 0, not confident
    [0.20, 0.80],  # 2: class 1, not confident
    [0.05, 0.95],  # 3: class 1, confident
    [0.97, 0.03],  # 4: class 0, confident
    [0.99, 0.01],  # 5: class 0, most confident
    [0.30, 0.70],  # 6: class 1, not confident
])


def test_only_confident_predictions_are_kept() -> None:
    chosen = select_confident(PROBS, 0.9, per_class_cap=10, balance=False)
    assert chosen.indices.tolist() == [0, 3, 4, 5]
    assert chosen.labels.tolist() == [0, 1, 0, 0]


def test_cap_keeps_the_most_confident_per_class() -> None:
    chosen = select_confident(PROBS, 0.9, per_class_cap=2, balance=False)
    assert chosen.indices.tolist() == [3, 4, 5]
    assert chosen.labels.tolist() == [1, 0, 0]


def test_balance_caps_every_class_at_the_rarest_confident_class() -> None:
    chosen = select_confident(PROBS, 0.9, per_class_cap=10, balance=True)
    assert chosen.indices.tolist() == [3, 5]
    assert chosen.labels.tolist() == [1, 0]


def test_nothing_confident_keeps_nothing() -> None:
    chosen = select_confident(PROBS, 1.0, per_class_cap=10, balance=True)
    assert chosen.indices.size == 0 and chosen.labels.size == 0


@settings(max_examples=100, deadline=None)
@given(
    raw=arrays(np.float64, st.tuples(st.integers(0, 40), st.integers(2, 5)), elements=st.floats(0.01, 1.0)),
    threshold=st.floats(0.05, 1.0),
    cap=st.integers(1, 12),
    balance=st.booleans(),
)
def test_selection_invariants(raw: np.ndarray, threshold: float, cap: int, balance: bool) -> None:
    probs = raw / raw.sum(axis=1, keepdims=True)
    chosen = select_confident(probs, threshold, cap, balance)
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    assert (chosen.labels == predicted[chosen.indices]).all()
    assert (confidence[chosen.indices] >= threshold).all()
    assert len(set(chosen.indices.tolist())) == len(chosen.indices)
    counts = np.bincount(chosen.labels, minlength=probs.shape[1])
    assert (counts <= cap).all()
    if balance:
        assert len({int(c) for c in counts if c}) <= 1
    for cls in range(probs.shape[1]):
        kept = chosen.indices[chosen.labels == cls]
        dropped = np.setdiff1d(np.flatnonzero((predicted == cls) & (confidence >= threshold)), kept)
        if kept.size and dropped.size:
            assert confidence[kept].min() >= confidence[dropped].max()


@pytest.fixture(scope="module")
def tiny_model(tiny_encoder_dir: Path) -> PromptClassifier:
    config = tiny_job(tiny_encoder_dir)
    return build_classifier(config, load_backbone(config.model.path))


def force_class(model: PromptClassifier, cls: int) -> None:
    """Make the model predict ``cls`` for every text with confidence ~1 (head bias, the last 2 entries)."""
    vector = model.get_vector()
    vector[-2:] = [20.0, -20.0] if cls == 0 else [-20.0, 20.0]
    model.set_vector(vector)


POOL = [Example(f"the film was number {i}", "") for i in range(30)]
LABELS = ("neg", "pos")


def labeller(cap: int = 100, max_unlabelled: int = 0, gold: tuple[str, ...] = ()) -> PseudoLabeller:
    section = AugmentSection(enabled=True, threshold=0.9, per_class_cap=cap, max_unlabelled=max_unlabelled)
    return PseudoLabeller(section, POOL, LABELS, "0:site-0", gold)


def test_labels_are_recomputed_from_the_model_at_each_call(tiny_model: PromptClassifier) -> None:
    pl = labeller(cap=5)
    force_class(tiny_model, 0)
    first, first_labels, _ = pl.label(tiny_model.predict_proba)
    force_class(tiny_model, 1)
    second, second_labels, metrics = pl.label(tiny_model.predict_proba)
    assert first_labels == [0] * 5 and {e.label for e in first} == {"neg"}
    assert second_labels == [1] * 5 and {e.label for e in second} == {"pos"}
    assert metrics["pseudo_labels"] == 5 and metrics["pseudo_label_pool"] == 30 and metrics["pseudo_label_seconds"] >= 0


def test_gold_labels_only_measure_never_change_training_data(tiny_model: PromptClassifier) -> None:
    force_class(tiny_model, 0)
    blind = labeller(cap=4).label(tiny_model.predict_proba)
    right = labeller(cap=4, gold=("neg",) * 30).label(tiny_model.predict_proba)
    wrong = labeller(cap=4, gold=("pos",) * 30).label(tiny_model.predict_proba)
    assert blind[0] == right[0] == wrong[0] and blind[1] == right[1] == wrong[1]
    assert "pseudo_label_accuracy" not in blind[2]
    assert right[2]["pseudo_label_accuracy"] == 1.0 and right[2]["pseudo_label_pool_accuracy"] == 1.0
    assert wrong[2]["pseudo_label_accuracy"] == 0.0 and wrong[2]["pseudo_label_pool_accuracy"] == 0.0


def test_pool_cap_is_a_fixed_seeded_subset(tiny_model: PromptClassifier) -> None:
    a, b = labeller(max_unlabelled=10), labeller(max_unlabelled=10)
    assert len(a.texts) == 10 and a.texts == b.texts and set(a.texts) < {e.text for e in POOL}
    force_class(tiny_model, 1)
    assert a.label(tiny_model.predict_proba)[2]["pseudo_label_pool"] == 10


def test_warmup_and_empty_pool_disable_labelling() -> None:
    pl = labeller()
    assert not pl.active(1) and pl.active(2)
    empty = PseudoLabeller(AugmentSection(enabled=True, warmup_rounds=0), [], LABELS, "s")
    assert not empty.active(5)


def test_gold_must_match_the_pool() -> None:
    with pytest.raises(ConfigError, match="gold labels"):
        labeller(gold=("neg",))
    with pytest.raises(ConfigError, match="not one of the job's labels"):
        labeller(gold=("maybe",) * 30)


def sites_with_pools(n: int = 3) -> list[SiteData]:
    out = []
    for k, site in enumerate(toy_sites(n)):
        pool = toy_examples(20, 500 + k)
        out.append(SiteData(site.train, site.test, [Example(e.text, "") for e in pool], [e.label for e in pool]))
    return out


def test_augmented_simulation_labels_every_round_after_warmup(tiny_encoder_dir: Path) -> None:
    config = dataclasses.replace(tiny_job(tiny_encoder_dir, rounds=3), augment=AugmentSection(
        enabled=True, warmup_rounds=1, threshold=0.5, per_class_cap=6, gate=False))  # a random tiny model
    report = simulate(config, sites_with_pools())                                  # fails the gate (own test)
    rounds = {r["round"]: r for r in report["rounds"]}
    assert "pseudo_labels" not in rounds[1]
    for number in (2, 3):
        r = rounds[number]
        assert r["updates"] == 3 and 1 <= r["pseudo_labels"] <= 12
        assert r["pseudo_label_pool"] == 20 and r["pseudo_label_seconds"] > 0
        assert 0.0 <= r["pseudo_label_accuracy"] <= 1.0 and 0.0 <= r["pseudo_label_pool_accuracy"] <= 1.0


def test_augmentation_is_off_by_default(tiny_encoder_dir: Path) -> None:
    assert parse_toml("", JobConfig).augment.enabled is False
    report = simulate(tiny_job(tiny_encoder_dir, rounds=2), sites_with_pools())
    assert not any(k.startswith("pseudo_label") for r in report["rounds"] for k in r)


def test_split_keeps_gold_aside_and_prepare_never_writes_it(tmp_path: Path) -> None:
    examples = toy_examples(120, 7)
    sites = split_sites(examples[:100], examples[100:], LABELS, 2, PartitionSpec("fewshot", shots=8), 0)
    by_text = {e.text: e.label for e in examples[:100]}
    for site in sites:
        assert site.unlabelled and all(e.label == "" for e in site.unlabelled)
        assert site.unlabelled_gold == [by_text[e.text] for e in site.unlabelled]
    data = write_toy_dataset(tmp_path / "toy.jsonl", 120, 7)
    dirs = prepare(DataPlan(str(data), participants=2, test_size=20, partition=PartitionSpec("fewshot", shots=8)), tmp_path / "out")
    for site_dir in dirs:
        pool = (site_dir / "unlabelled.jsonl").read_text(encoding="utf-8").splitlines()
        assert {json.loads(line)["label"] for line in pool} == {""}
        assert sorted(p.name for p in site_dir.iterdir()) == ["test.jsonl", "train.jsonl", "unlabelled.jsonl"]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[augment]\nthreshold = 0.0", "augment.threshold"),
        ("[augment]\nthreshold = 1.5", "augment.threshold"),
        ("[augment]\nper_class_cap = 0", "augment.per_class_cap"),
        ("[augment]\nwarmup_rounds = -1", "augment.warmup_rounds"),
        ("[augment]\nmax_unlabelled = -5", "augment.max_unlabelled"),
        ("[augment]\nenabled = 'yes'", "augment.enabled"),
        ("[augment]\nconfidence = 0.9", "augment.confidence"),
        ("[job]\nrounds = 3\n[augment]\nenabled = true\nwarmup_rounds = 3", "augment.warmup_rounds"),
    ],
)
def test_bad_augment_values_name_their_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_toml(text, JobConfig)


def test_augment_config_round_trips_and_warmup_is_free_when_disabled() -> None:
    config = parse_toml("[job]\nrounds = 4\n[augment]\nenabled = true\nwarmup_rounds = 2\nthreshold = 0.8\n"
                        "per_class_cap = 16\nbalance = false\nmax_unlabelled = 500", JobConfig)
    assert config.augment == AugmentSection(True, 2, 0.8, 16, False, 500)
    assert parse_toml(dump_toml(config), JobConfig) == config
    assert parse_toml("[job]\nrounds = 2\n[augment]\nwarmup_rounds = 9", JobConfig).augment.enabled is False


def test_a_prompt_that_does_not_beat_the_majority_class_on_labelled_data_labels_nothing() -> None:
    """The gate: pseudo-labels from a prompt worse than always answering the majority class would only feed its
    errors back; one that beats it labels as before, and the gate's measurement is reported either way."""
    labelled = [Example("good", "pos"), Example("fine", "pos"), Example("bad", "neg")]  # majority share 2/3

    def confident(cls_of: dict[str, int]):
        def predict(texts: list[str]) -> np.ndarray:
            return np.array([[0.99, 0.01] if cls_of.get(t, 0) == 0 else [0.01, 0.99] for t in texts])
        return predict

    wrong = confident({"bad": 1})  # 0 of 3 labelled right, and says "neg" for every pool text
    examples, labels, metrics = labeller(cap=5).label(wrong, labelled, [1, 1, 0])
    assert examples == [] and labels == []
    assert metrics["pseudo_label_gated"] == 1.0 and metrics["pseudo_label_gate_accuracy"] == 0.0
    right = confident({"good": 1, "fine": 1})  # 3 of 3 > 2/3
    examples, labels, metrics = labeller(cap=5).label(right, labelled, [1, 1, 0])
    assert len(labels) == 5 and metrics["pseudo_label_gated"] == 0.0 and metrics["pseudo_label_gate_accuracy"] == 1.0
    ungated = PseudoLabeller(AugmentSection(enabled=True, threshold=0.9, per_class_cap=5, gate=False), POOL, LABELS,
                             "0:site-0")
    assert len(ungated.label(wrong, labelled, [1, 1, 0])[1]) == 5


def test_bench_fewshot_reports_the_issue_rows_at_the_shots_asked(tmp_path: Path) -> None:
    """`fedprompt bench fewshot --smoke` on real Rotten Tomatoes texts (a tiny random decoder, a warm-up round and
    one more): the JSON has the issue's rows for all three settings, ``--shots`` reaches the partition (8 labelled
    per site on average), the pool is labelled only after the warm-up round, and the plot is written.  The smoke
    test checks every key; this one what they hold."""
    from fedprompt.app.bench import fewshot
    from fedprompt.app.cli import main

    report = tmp_path / "fs.json"
    assert main(["bench", "fewshot", "--smoke", "--dataset", "rotten_tomatoes", "--shots", "8",
                 "--report", str(report)]) == 0
    out = json.loads(report.read_text())
    assert [(r["dataset"], r["setting"]) for r in out["rows"]] == [("rotten_tomatoes", s) for s in fewshot.SETTINGS]
    for row in out["rows"]:
        assert 0.0 <= row["accuracy"] <= 1.0 and row["seconds"] >= 0
    assert out["settings"]["partition"]["shots"] == 8
    details = out["datasets"]["rotten_tomatoes"]
    assert sum(details["labelled_per_site"]) == out["settings"]["sites"] * 8
    kept = [r["pseudo_labels"] for r in details["pseudo_label_rounds"][0]]
    assert kept[0] is None and kept[1] is not None  # a random tiny prompt may keep none: the gate decides
    assert report.with_suffix(".png").stat().st_size > 0
    assert main(["bench", "fewshot", "--shots", "0", "--report", str(tmp_path / "no.json")]) == 2
    assert not (tmp_path / "no.json").exists()
