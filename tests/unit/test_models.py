"""Soft-prompt classifiers on tiny random backbones: only the prompt (and head) train and cross the wire; a levelled
prompt (PLMM) splits into its global, expert and personal levels."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from fedprompt.config import ModelSection, TrainSection
from fedprompt.data.datasets import label_indices
from fedprompt.errors import InvalidUpdate
from fedprompt.models import build_classifier
from fedprompt.models.backbone import resolve_model_path
from fedprompt.participant.train import evaluate, train_local
from fedprompt.scoring import length_batches
from tests.support import levelled, tiny_job, toy_examples


@pytest.mark.parametrize("kind", ["encoder", "causal"])
def test_prompt_vector_round_trip_and_frozen_backbone(kind: str, tiny_encoder_dir: Path, tiny_causal_dir: Path) -> None:
    model = build_classifier(tiny_job(tiny_encoder_dir if kind == "encoder" else tiny_causal_dir))
    assert model.kind == kind
    assert all(not p.requires_grad for p in model.backbone.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == model.vector_size == model.get_vector().size
    vector = np.random.default_rng(0).normal(size=model.vector_size).astype(np.float32)
    model.set_vector(vector)
    np.testing.assert_array_equal(model.get_vector(), vector)
    with pytest.raises(InvalidUpdate):
        model.set_vector(vector[:-1])
    probs = model.predict_proba(["a good film", "a bad film"])
    assert probs.shape == (2, 2) and np.allclose(probs.sum(1), 1)


@pytest.mark.parametrize("kind", ["encoder", "causal"])
def test_predict_proba_batches_by_token_length_and_answers_in_the_callers_order(
        kind: str, tiny_encoder_dir: Path, tiny_causal_dir: Path) -> None:
    """Inference sorts texts by token length into batches, yet each row is the text's own probabilities, as if
    scored alone; the lengths here are in falling order, so sorting changes every batch."""
    model = build_classifier(tiny_job(tiny_encoder_dir if kind == "encoder" else tiny_causal_dir))
    texts = ["a long and rather winding review of a film that goes on", "a fine and good film", "bad", "good film"]
    alone = np.concatenate([model.predict_proba([t]) for t in texts])
    np.testing.assert_allclose(model.predict_proba(texts, batch_size=2), alone, rtol=1e-5, atol=1e-6)


def test_length_batches_cover_every_row_once_shortest_first() -> None:
    batches = length_batches([5, 1, 3, 1, 9], 2)
    assert [b.tolist() for b in batches] == [[1, 3], [2, 0], [4]]
    assert length_batches([], 4) == []


def test_training_moves_only_the_prompt_and_learns_the_toy_task(tiny_encoder_dir: Path) -> None:
    config = tiny_job(tiny_encoder_dir)
    model = build_classifier(config)
    frozen = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    train, test = toy_examples(64, 0), toy_examples(64, 1)
    names = config.task.label_names
    before = evaluate(model, test, label_indices(test, names))
    start = model.get_vector()
    train_local(model, train, label_indices(train, names), TrainSection(local_epochs=8, batch_size=8, lr=0.05), 0)
    after = evaluate(model, test, label_indices(test, names))
    assert not np.allclose(model.get_vector(), start)
    assert all((frozen[k] == v).all() for k, v in model.backbone.state_dict().items())
    assert after["loss"] < before["loss"]


def test_exchanged_fraction_of_real_minilm_is_tiny() -> None:
    from fedprompt.config import JobConfig

    model = build_classifier(JobConfig())
    assert model.vector_size / model.plm_parameters <= 0.0005


def test_prompt_levels_concatenate_in_the_prompt_and_split_the_vector(tiny_encoder_dir: Path) -> None:
    config = levelled(tiny_job(tiny_encoder_dir), cohorts_from="discover")
    config = dataclasses.replace(config, model=ModelSection(path=str(tiny_encoder_dir), prompt_length=4, max_length=16))
    model = build_classifier(config)
    dim = 32
    head = dim * 2 + 2
    assert model.prompt is not None and model.prompt.length == 4 and model.prompt(3).shape == (3, 4, dim)
    assert model.level_sizes() == {"global": 2 * dim + head, "expert": dim}
    assert model.vector_size == 3 * dim + head and model.personal_vector().shape == (dim,)
    personal = model.personal_vector().copy()
    model.set_vector(np.zeros(model.vector_size, dtype=np.float32))  # the shared levels only
    assert np.array_equal(model.personal_vector(), personal)
    assert sum(p.numel() for p in model.trainable_parameters()) == model.vector_size + dim
    examples = toy_examples(8, 0)
    train_local(model, examples, [int(e.label == "pos") for e in examples], config.train, 0)
    assert not np.array_equal(model.personal_vector(), personal)  # trained with the other levels
    model.set_personal_vector(personal)
    assert np.array_equal(model.personal_vector(), personal)


def test_the_smollm2_cache_drops_the_gguf_quantization_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    """The converted SmolLM2 cache holds dequantized safetensors: a ``quantization_config`` left in its config (as
    caches written before this fix have) would attach transformers' GGUF quantizer to plain linear layers and warn
    of packed kernels in low precision.  Resolving the builtin drops it, keeps every other field, and is idempotent."""
    monkeypatch.setenv("FEDPROMPT_CACHE", str(tmp_path))
    cached = tmp_path / "smollm2-135m-instruct"
    cached.mkdir()
    (cached / "model.safetensors").write_bytes(b"")
    fields = {"architectures": ["LlamaForCausalLM"], "hidden_size": 576,
              "quantization_config": {"quant_method": "gguf", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}}
    (cached / "config.json").write_text(json.dumps(fields), encoding="utf-8")
    assert resolve_model_path("builtin:smollm2") == cached
    kept = json.loads((cached / "config.json").read_text(encoding="utf-8"))
    assert kept == {k: v for k, v in fields.items() if k != "quantization_config"}
    text = (cached / "config.json").read_text(encoding="utf-8")
    assert resolve_model_path("builtin:smollm2") == cached
    assert (cached / "config.json").read_text(encoding="utf-8") == text
