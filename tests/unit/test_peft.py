"""PEFT methods chosen per job (``[peft]``): the config names a bad key; prefix and LoRA are refused where only a
shallow prompt works (prompt levels, black-box search); both are peft's modules on tiny random backbones, trained
plainly and with DP-SGD (real Opacus), and federated through the same path as prompts (real CKKS)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from peft import LoraConfig

from fedprompt.app.simulate import simulate
from fedprompt.config import DPSection, HESection, JobConfig, PeftSection, TrainSection, dump_toml, parse_toml
from fedprompt.data.datasets import label_indices
from fedprompt.errors import ConfigError, InvalidUpdate
from fedprompt.models import build_classifier, load_backbone, resolve_placement
from fedprompt.models.adapters import block_linears
from fedprompt.models.classifier import prompted_features
from fedprompt.participant.dp import RecordAccountant, plan_record_dp, train_local_dp
from fedprompt.participant.train import backward_in_parts, evaluate, train_local
from tests.support import tiny_job, toy_examples, toy_sites

DEVICES = ["cpu"] + (["cuda:0"] if torch.cuda.is_available() else [])

pytestmark = [pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha"),
              pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
              pytest.mark.filterwarnings("ignore:Full backward hook is firing")]


@pytest.mark.parametrize("lines, key", [
    ("method = 'ia3'", "peft.method"),
    ("lora_rank = 0", "peft.lora_rank"),
    ("lora_alpha = 0", "peft.lora_alpha"),
    ("lora_dropout = 1.0", "peft.lora_dropout"),
    ("lora_target_modules = ['q_proj', '../x']", r"peft.lora_target_modules\[1\]"),
    ("lora_target_modules = ['all-linear', 'q_proj']", r"peft.lora_target_modules\[0\]: 'all-linear' already takes every linear layer of the blocks"),
    ("lora_rank = 'eight'", "peft.lora_rank"),
])
def test_bad_peft_config_fails_at_load_naming_the_key(lines: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}: "):
        parse_toml(f"[peft]\n{lines}\n", JobConfig, "job.toml")


def test_peft_defaults_to_the_shallow_prompt_and_round_trips() -> None:
    assert JobConfig().peft == PeftSection(method="prompt")
    config = JobConfig(peft=PeftSection(method="lora", lora_rank=4, lora_target_modules=("q_proj", "v_proj")))
    assert parse_toml(dump_toml(config), JobConfig) == config


@pytest.mark.parametrize("method", ["prefix", "lora"])
def test_levels_and_black_box_are_refused_for_methods_without_a_shallow_prompt(method: str) -> None:
    levels = "[levels]\nenabled = true\nglobal_tokens = 8\nexpert_tokens = 4\npersonal_tokens = 4\n"
    with pytest.raises(ConfigError, match=f"^levels.enabled: .*peft.method = '{method}' has none"):
        parse_toml(f"[peft]\nmethod = '{method}'\n{levels}", JobConfig)
    blackbox = "[blackbox]\nenabled = true\n[model]\ntrain_head = false\n"
    with pytest.raises(ConfigError, match=f"^peft.method: '{method}' cannot be searched black-box: FedBPT"):
        parse_toml(f"[peft]\nmethod = '{method}'\n{blackbox}", JobConfig)
    assert parse_toml(f"[peft]\nmethod = 'prompt'\n{levels}", JobConfig).levels.enabled


def adapter_job(model_dir: Path, method: str, **peft: Any) -> JobConfig:
    return dataclasses.replace(tiny_job(model_dir), peft=PeftSection(method=method, lora_rank=4, **peft))


def model_dir(kind: str, tiny_encoder_dir: Path, tiny_causal_dir: Path) -> Path:
    return tiny_encoder_dir if kind == "encoder" else tiny_causal_dir


@pytest.mark.parametrize("kind", ["encoder", "causal"])
@pytest.mark.parametrize("method", ["prefix", "lora"])
def test_the_exchanged_vector_is_the_peft_state_dict_then_the_head(
        method: str, kind: str, tiny_encoder_dir: Path, tiny_causal_dir: Path) -> None:
    """Exactly the trainable tensors cross the wire: peft's adapter state dict in its own order, then (encoders)
    the label head; the PLM stays frozen, and the vector loads back exactly."""
    model = build_classifier(adapter_job(model_dir(kind, tiny_encoder_dir, tiny_causal_dir), method))
    assert model.method == method and model.prompt is None
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == model.vector_size == model.get_vector().size
    assert all(p.dtype == torch.float32 for p in trainable)
    vector = np.random.default_rng(0).normal(size=model.vector_size).astype(np.float32)
    model.set_vector(vector)
    np.testing.assert_array_equal(model.get_vector(), vector)
    state = model.peft_state_dict()
    adapter = np.concatenate([t.detach().reshape(-1).numpy() for t in state.values()])
    head = model.vector_size - adapter.size
    assert head == (0 if kind == "causal" else 32 * 2 + 2)
    np.testing.assert_array_equal(adapter, vector[: adapter.size])
    if method == "lora":  # query/value (BERT) or q_proj/v_proj (Llama) in 2 layers: A (4 x 32) and B (32 x 4)
        assert list(state)[0].endswith("layer.0.attention.self.query.lora_A.weight" if kind == "encoder"
                                       else "layers.0.self_attn.q_proj.lora_A.weight")
        assert adapter.size == 2 * 2 * (4 * 32 + 32 * 4)
    else:  # one key and one value row per layer and virtual token
        assert list(state) == ["prompt_embeddings"] and adapter.size == 4 * 2 * 2 * 32
    assert model.plm_parameters == sum(p.numel() for p in model.backbone.parameters()) - adapter.size * (
        method == "lora")
    with pytest.raises(InvalidUpdate):
        model.set_vector(vector[:-1])


@pytest.mark.parametrize("kind", ["encoder", "causal"])
@pytest.mark.parametrize("method", ["prefix", "lora"])
def test_adapters_learn_the_toy_task_with_the_plm_frozen(
        method: str, kind: str, tiny_encoder_dir: Path, tiny_causal_dir: Path) -> None:
    config = adapter_job(model_dir(kind, tiny_encoder_dir, tiny_causal_dir), method)
    model = build_classifier(config)
    frozen = {k: v.clone() for k, v in model.backbone.state_dict().items() if "lora_" not in k}
    train, test = toy_examples(64, 0), toy_examples(64, 1)
    names = config.task.label_names
    before = evaluate(model, test, label_indices(test, names))
    start = model.get_vector()
    train_local(model, train, label_indices(train, names), TrainSection(local_epochs=6, batch_size=8, lr=0.05), 0)
    after = evaluate(model, test, label_indices(test, names))
    assert not np.allclose(model.get_vector(), start)
    assert all(torch.equal(frozen[k], v) for k, v in model.backbone.state_dict().items() if k in frozen)
    assert after["loss"] < before["loss"]


def test_lora_starts_as_the_untouched_plm(tiny_causal_dir: Path) -> None:
    """LoRA's B starts at zero, so the untuned adapter scores exactly as the frozen model does."""
    lora = build_classifier(adapter_job(tiny_causal_dir, "lora"))
    enc = lora.tokenize(["the film was good", "a dull film"])
    with torch.no_grad():
        adapted = lora(**enc)
        plain = prompted_features(lora.backbone, "causal", enc["input_ids"], enc["attention_mask"],
                                  torch.zeros(2, 0, 32))[:, lora.label_token_ids]
        with lora._peft[0].disable_adapter():
            off = lora(**enc)
    torch.testing.assert_close(adapted, plain)
    torch.testing.assert_close(off, plain)


@pytest.mark.parametrize("kind", ["encoder", "causal"])
@pytest.mark.parametrize("method", ["prefix", "lora"])
def test_opacus_per_example_gradients_of_adapters_are_each_examples_own(
        method: str, kind: str, tiny_encoder_dir: Path, tiny_causal_dir: Path) -> None:
    """Opacus 1.6's grad samplers cover LoRA's ``nn.Linear`` parts and the prefix encoder's ``nn.Embedding``: the
    per-example gradient of every trainable tensor equals that example's gradient computed alone."""
    config = adapter_job(model_dir(kind, tiny_encoder_dir, tiny_causal_dir), method)
    model = build_classifier(config)
    # away from the initial point (LoRA's B = 0 there, so A's gradients vanish and would compare trivially)
    model.set_vector(np.random.default_rng(1).normal(scale=0.2, size=model.vector_size).astype(np.float32))
    for module in model.modules():  # Opacus records in training mode: dropout off so both see one function
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    examples = toy_examples(5, 4)
    y = torch.tensor(label_indices(examples, config.task.label_names))
    params = model.trainable_parameters()
    wrapped = GradSampleModule(model, loss_reduction="sum")
    wrapped.train()
    backward_in_parts(model, wrapped, examples, y, list(range(5)), 5, scale=1.0)
    samples = [p.grad_sample.clone() for p in params]  # type: ignore[attr-defined]
    wrapped._close()
    for i in range(5):
        model.zero_grad(set_to_none=True)
        backward_in_parts(model, model, examples, y, [i], 1, scale=1.0)
        for p, sample in zip(params, samples, strict=True):
            assert p.grad is not None and bool(p.grad.abs().sum() > 0)
            torch.testing.assert_close(sample[i], p.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["prefix", "lora"])
def test_dp_sgd_on_adapters_spends_what_opacus_computes(method: str, tiny_encoder_dir: Path) -> None:
    config = dataclasses.replace(adapter_job(tiny_encoder_dir, method), dp=DPSection(enabled=True, noise_multiplier=1.1))
    model = build_classifier(config)
    examples = toy_examples(40, 1)
    plan = plan_record_dp(config.dp, config.train, config.job.rounds, len(examples))
    accountant = RecordAccountant("rdp", None)
    start = model.get_vector()
    for _ in range(2):
        train_local_dp(model, examples, label_indices(examples, config.task.label_names), config.train, plan, accountant)
    assert not np.allclose(start, model.get_vector())
    rdp = rdp_analysis.compute_rdp(q=plan.sample_rate, noise_multiplier=1.1, steps=2 * plan.steps_per_round,
                                   orders=RDPAccountant.DEFAULT_ALPHAS)
    expected, _ = rdp_analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=plan.delta)
    assert accountant.epsilon(plan.delta) == pytest.approx(float(expected), rel=1e-12)


@pytest.mark.parametrize("kind", ["encoder", "causal"])
def test_all_linear_adapts_every_linear_layer_of_the_blocks_and_each_gets_per_example_gradients(
        kind: str, tiny_encoder_dir: Path, tiny_causal_dir: Path) -> None:
    """``lora_target_modules = ["all-linear"]``: LoRA beside every ``nn.Linear`` inside the numbered blocks, none
    beside the causal LM's output head or the encoder's pooler (which the classifier does not read), so DP-SGD
    finds a per-example gradient for every adapter tensor; the peft config names the layers, not the shorthand."""
    config = dataclasses.replace(adapter_job(model_dir(kind, tiny_encoder_dir, tiny_causal_dir), "lora",
                                             lora_target_modules=("all-linear",)),
                                 dp=DPSection(enabled=True, noise_multiplier=1.0))
    assert parse_toml(dump_toml(config), JobConfig).peft.lora_target_modules == ("all-linear",)
    model = build_classifier(config)
    modules = dict(model.peft_model.get_base_model().named_modules())
    adapted = {name.removesuffix(".lora_A") for name in modules if name.endswith(".lora_A")}
    plm_linears = {name.removesuffix(".base_layer") for name, module in modules.items()  # LoRA's own A, B aside
                   if isinstance(module, torch.nn.Linear) and not name.endswith((".lora_A.default", ".lora_B.default"))}
    in_blocks = {name for name in plm_linears if any(part.isdigit() for part in name.split("."))}
    outside = plm_linears - in_blocks
    assert adapted == in_blocks and len(adapted) >= 4
    assert outside == ({"pooler.dense"} if kind == "encoder" else {"lm_head"})
    lora = model.peft_model.peft_config["default"]
    assert isinstance(lora, LoraConfig) and lora.target_modules is not None
    targets = lora.target_modules
    assert "all-linear" not in targets and all(not name.endswith(tuple(targets)) for name in outside)
    examples = toy_examples(12, 0)
    labels = label_indices(examples, config.task.label_names)
    wrapped = GradSampleModule(model, loss_reduction="sum")
    wrapped.train()
    backward_in_parts(model, wrapped, examples, torch.tensor(labels), list(range(6)), 6, scale=1.0)
    assert all(p.grad_sample is not None and p.grad_sample.shape[0] == 6  # type: ignore[attr-defined]
               for p in model.trainable_parameters())
    wrapped._close()


def test_all_linear_on_a_model_without_numbered_blocks_asks_for_names() -> None:
    with pytest.raises(ConfigError, match="^peft.lora_target_modules: 'all-linear' found no linear layer in "
                                          "numbered blocks of Sequential; name the layers to adapt$"):
        block_linears(torch.nn.Sequential(torch.nn.Linear(2, 2)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["prefix", "lora"])
def test_adapters_stay_float32_on_a_bfloat16_plm(method: str, device: str, tiny_causal_dir: Path) -> None:
    config = dataclasses.replace(adapter_job(tiny_causal_dir, method), dp=DPSection(enabled=True, noise_multiplier=1.0))
    model = build_classifier(config, placement=resolve_placement(device, "bfloat16"))
    assert all(p.dtype == torch.float32 for p in model.trainable_parameters())
    assert {p.dtype for p in model.backbone.parameters() if not p.requires_grad} == {torch.bfloat16}
    examples = toy_examples(16, 0)
    labels = label_indices(examples, config.task.label_names)
    start = model.get_vector()
    assert np.isfinite(train_local(model, examples, labels, config.train, 0).loss)
    plan = plan_record_dp(config.dp, config.train, config.job.rounds, len(examples))
    train_local_dp(model, examples, labels, config.train, plan, RecordAccountant("rdp", None))
    assert not np.allclose(model.get_vector(), start) and np.isfinite(model.get_vector()).all()


def test_a_shared_backbone_carries_one_adapter_and_bad_targets_are_named(tiny_causal_dir: Path) -> None:
    backbone = load_backbone(str(tiny_causal_dir))
    first = build_classifier(adapter_job(tiny_causal_dir, "lora"), backbone)
    second = build_classifier(adapter_job(tiny_causal_dir, "lora"), backbone)  # the same adapter, shared
    assert [p.data_ptr() for p in first.exchanged_parameters()] == [p.data_ptr() for p in second.exchanged_parameters()]
    with pytest.raises(ConfigError, match="^peft: this loaded backbone already carries another adapter"):
        build_classifier(adapter_job(tiny_causal_dir, "lora", lora_alpha=4), backbone)
    with pytest.raises(ConfigError, match="^peft: .*no_such_layer"):
        build_classifier(adapter_job(tiny_causal_dir, "lora", lora_target_modules=("no_such_layer",)))


@pytest.mark.parametrize("method, extra", [
    ("lora", {"he": HESection(enabled=True, mode="single_key")}),
    ("prefix", {"job": "median"}),
])
def test_adapters_federate_through_the_same_secure_path(method: str, extra: dict[str, Any],
                                                        tiny_encoder_dir: Path) -> None:
    """A whole job in-process: LoRA under CKKS, prefixes under a robust aggregator with DP-SGD and participant-level
    DP; the report names the method and the exchanged floats' share of the PLM."""
    config = adapter_job(tiny_encoder_dir, method)
    if "he" in extra:
        config = dataclasses.replace(config, he=extra["he"])
    else:
        config = dataclasses.replace(config, job=dataclasses.replace(config.job, aggregator=extra["job"],
                                                                     min_participants=3),
                                     dp=DPSection(enabled=True, noise_multiplier=1.0, participant_noise_multiplier=0.5))
    report = simulate(config, toy_sites())
    size = build_classifier(config).vector_size
    assert report["state"] == "done" and report["peft_method"] == method
    assert report["exchanged_floats"] == size and report["exchanged_over_plm"] == size / report["plm_params"]
    assert all(r["accuracy"] is not None and r["updates"] == 3 for r in report["rounds"])
