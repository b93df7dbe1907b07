"""The attack simulator: config validation, who attacks, what each attack does to data and deltas, ASR."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from fedprompt.app.attacks import Adversary, AttackSection, SuccessRate, attack_success_rate, choose_malicious
from fedprompt.app.simulate import load_simulation, parse_simulation
from fedprompt.config import dump_toml
from fedprompt.data.datasets import Example
from fedprompt.errors import ConfigError
from fedprompt.participant.runtime import SiteBehaviour
from tests.support import REPO, toy_examples

LABELS = ("neg", "pos")


def test_attack_config_names_bad_keys_and_unknown_target() -> None:
    with pytest.raises(ConfigError, match="attack.kind"):
        parse_simulation('[attack]\nkind = "teleport"')
    with pytest.raises(ConfigError, match="attack.malicious_fraction"):
        parse_simulation('[attack]\nkind = "backdoor"\nmalicious_fraction = 1.5')
    with pytest.raises(ConfigError, match="attack.target_label"):
        parse_simulation('[attack]\nkind = "backdoor"\ntarget_label = "maybe"')
    with pytest.raises(ConfigError, match="attack.colour: unknown key"):
        parse_simulation('[attack]\ncolour = "red"')


def test_attack_table_never_reaches_the_job_config_the_coordinator_sees() -> None:
    sim = load_simulation(REPO / "examples" / "backdoor.toml")
    assert sim.attack.kind == "backdoor" and sim.attack.scale == 5.0 and sim.simulation.participants == 10
    text = dump_toml(sim.job)
    assert "attack" not in text and "simulation" not in text and "trigger" not in text
    assert choose_malicious(10, sim.attack) == choose_malicious(10, sim.attack)
    assert len(choose_malicious(10, sim.attack)) == 2


def test_no_attack_means_no_malicious_site() -> None:
    assert choose_malicious(10, AttackSection()) == ()
    assert choose_malicious(10, AttackSection(kind="backdoor", malicious_fraction=0.0)) == ()


def test_backdoor_poisons_the_configured_share_with_trigger_and_target_label() -> None:
    examples = toy_examples(40, 0)
    adversary = Adversary(AttackSection(kind="backdoor", malicious_fraction=0.2, poison_rate=0.25, target_label="pos"),
                          LABELS, 3)
    poisoned = adversary.training_examples(examples)
    changed = [(a, b) for a, b in zip(examples, poisoned) if a != b or "cf" in b.text.split()]
    assert len(changed) == 10
    assert all("cf" in b.text.split() and b.label == "pos" for _, b in changed)
    assert adversary.training_examples(examples) is poisoned


def test_label_flip_changes_labels_only() -> None:
    examples = toy_examples(20, 1)
    flipped = Adversary(AttackSection(kind="label_flip", malicious_fraction=0.2, poison_rate=1.0), LABELS, 0)
    out = flipped.training_examples(examples)
    assert [e.text for e in out] == [e.text for e in examples]
    assert all(a.label != b.label for a, b in zip(examples, out))


@pytest.mark.parametrize("kind", ["sign_flip", "gaussian", "free_rider", "backdoor"])
def test_update_attacks_transform_the_delta(kind: str) -> None:
    delta = np.linspace(-1, 1, 16, dtype=np.float32)
    out = Adversary(AttackSection(kind=kind, malicious_fraction=0.2, scale=3.0, noise_std=0.5), LABELS, 0
                    ).outgoing_delta(delta, 1)
    assert out.shape == delta.shape and out.dtype == np.float32
    expected = {"sign_flip": -3 * delta, "free_rider": np.zeros_like(delta), "backdoor": 3 * delta}
    if kind in expected:
        assert np.allclose(out, expected[kind])
    else:
        assert not np.allclose(out, 3 * delta) and np.isfinite(out).all()


def test_honest_behaviour_is_identity() -> None:
    delta = np.ones(4, np.float32)
    examples = toy_examples(3, 0)
    honest = SiteBehaviour()
    assert honest.training_examples(examples) is examples and honest.outgoing_delta(delta, 1) is delta


class KeywordModel:
    """A stand-in classifier for the metric: says "pos" when the text has "good" or the trigger "cf"."""

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        pos = np.array([("good" in t.split() or "cf" in t.split()) for t in texts], dtype=float)
        return np.stack([1 - pos, pos], axis=1)


def test_attack_success_rate_counts_only_correct_non_target_inputs() -> None:
    test = [Example("the film was bad", "neg"), Example("the film was awful", "neg"),
            Example("the film was good", "neg"), Example("good", "pos")]
    attack = AttackSection(kind="backdoor", malicious_fraction=0.2, target_label="pos")
    assert attack_success_rate(KeywordModel().predict_proba, test, LABELS, attack) == SuccessRate(1.0, 2)
    assert attack_success_rate(KeywordModel().predict_proba, [Example("good", "pos")], LABELS, attack) == \
        SuccessRate(None, 0)


def test_example_file_parses_with_every_defence(tmp_path: Path) -> None:
    for name in ("fedavg", "norm_bound", "median", "trimmed_mean", "krum", "multi_krum", "foolsgold"):
        sim = load_simulation(REPO / "examples" / "backdoor.toml", {"job.aggregator": name})
        assert sim.job.job.aggregator == name
