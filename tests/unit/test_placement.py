"""Devices and precision: settings checked by name, resolved to torch's, and a low-precision frozen backbone under
float32 trainable tensors, trained plainly and with DP-SGD.  Every test runs on each device torch sees here (the
CPU, plus the first GPU where CUDA is present), so a GPU machine exercises its path with the same assertions."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from fedprompt.config import DPSection, ModelServiceConfig, ParticipantConfig, parse_toml
from fedprompt.data.datasets import label_indices
from fedprompt.errors import ConfigError
from fedprompt.models import Placement, build_classifier, load_backbone, resolve_placement
from fedprompt.participant.dp import RecordAccountant, plan_record_dp, train_local_dp
from fedprompt.participant.model_service import ort_providers
from fedprompt.participant.train import train_local
from tests.support import tiny_job, toy_examples

DEVICES = ["cpu"] + (["cuda:0"] if torch.cuda.is_available() else [])

pytestmark = [pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha"),
              pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
              pytest.mark.filterwarnings("ignore:Full backward hook is firing")]


@pytest.mark.parametrize("config, section, line, key", [
    (ParticipantConfig, "participant", "device = 'gpu'", "participant.device"),
    (ParticipantConfig, "participant", "device = 'cuda:x'", "participant.device"),
    (ParticipantConfig, "participant", "dtype = 'int8'", "participant.dtype"),
    (ModelServiceConfig, "model_service", "device = 'tpu'", "model_service.device"),
    (ModelServiceConfig, "model_service", "dtype = 'bfloat16'", "model_service.dtype"),
])
def test_bad_device_or_dtype_is_refused_at_load_naming_the_key(config: type, section: str, line: str, key: str) -> None:
    job = "job = 'j'\ninsecure = true\n" if section == "participant" else "insecure = true\n"
    with pytest.raises(ConfigError, match=f"^{key}: "):
        parse_toml(f"[{section}]\n{job}{line}\n", config, "site.toml")


def test_placements_resolve_auto_to_what_this_machine_has_and_refuse_a_missing_gpu() -> None:
    auto = resolve_placement("auto", "auto")
    gpu = torch.cuda.is_available()
    assert auto.device.type == ("cuda" if gpu else "cpu")
    assert auto.dtype == (torch.bfloat16 if gpu and torch.cuda.is_bf16_supported() else torch.float32)
    assert resolve_placement("cpu", "bfloat16") == Placement(torch.device("cpu"), torch.bfloat16)
    with pytest.raises(ConfigError, match=r"^participant\.device: 'cuda:999' is not available here"):
        resolve_placement("cuda:999", "auto")
    with pytest.raises(ConfigError, match="^--dtype: "):
        resolve_placement("cpu", "half", "")


def test_model_service_providers_follow_the_device_setting() -> None:
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert ort_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert ort_providers("cpu", both) == ["CPUExecutionProvider"]
    assert ort_providers("auto", both)[0] == ("CUDAExecutionProvider", {"device_id": "0"})
    assert ort_providers("cuda:1", both)[0] == ("CUDAExecutionProvider", {"device_id": "1"})
    with pytest.raises(ConfigError, match=r"^model_service\.device: 'cuda' needs onnxruntime's CUDAExecutionProvider"):
        ort_providers("cuda", ["CPUExecutionProvider"])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["encoder", "causal"])
def test_bfloat16_backbone_under_float32_trainables_scores_and_trains(
        kind: str, device: str, tiny_encoder_dir: Path, tiny_causal_dir: Path) -> None:
    """The frozen PLM loads in bfloat16 on ``device``; the prompt and head stay float32 there, logits come back in
    float32, the bfloat16 scores agree with the float32 model's, and a training round moves the vector."""
    config = tiny_job(tiny_encoder_dir if kind == "encoder" else tiny_causal_dir)
    placement = resolve_placement(device, "bfloat16")
    model = build_classifier(config, placement=placement)
    assert {p.dtype for p in model.backbone.parameters()} == {torch.bfloat16}
    assert all(p.dtype == torch.float32 and p.device == placement.device for p in model.trainable_parameters())
    enc = model.tokenize(["the film was good", "the film was bad"])
    assert model(**enc).dtype == torch.float32
    reference = build_classifier(config)  # float32 on the CPU: the same rows, read at float32 precision
    assert model.vector_size == reference.vector_size
    texts = [e.text for e in toy_examples(8, 3)]
    np.testing.assert_allclose(model.predict_proba(texts), reference.predict_proba(texts), atol=0.05)
    examples = toy_examples(16, 0)
    start = model.get_vector()
    result = train_local(model, examples, label_indices(examples, config.task.label_names), config.train, 0)
    assert np.isfinite(result.loss) and not np.allclose(model.get_vector(), start)
    assert all(p.dtype == torch.float32 for p in model.trainable_parameters())


@pytest.mark.parametrize("device", DEVICES)
def test_dp_sgd_on_a_bfloat16_backbone_clips_float32_per_example_gradients(device: str, tiny_causal_dir: Path) -> None:
    """Opacus computes per-example gradients for the float32 prompt under a bfloat16 PLM; the accountant is
    stepped exactly as in float32 (its epsilon equals a fresh one stepped by hand with the plan's steps)."""
    config = dataclasses.replace(tiny_job(tiny_causal_dir, rounds=2), dp=DPSection(enabled=True, noise_multiplier=1.0))
    model = build_classifier(config, placement=resolve_placement(device, "bfloat16"))
    examples = toy_examples(20, 1)
    plan = plan_record_dp(config.dp, config.train, config.job.rounds, len(examples))
    accountant = RecordAccountant("rdp", None)
    start = model.get_vector()
    train_local_dp(model, examples, label_indices(examples, config.task.label_names), config.train, plan, accountant)
    assert not np.allclose(model.get_vector(), start) and np.isfinite(model.get_vector()).all()
    expected = RecordAccountant("rdp", None)
    expected.accountant.step(noise_multiplier=1.0, sample_rate=plan.sample_rate)
    for _ in range(plan.steps_per_round - 1):
        expected.accountant.step(noise_multiplier=1.0, sample_rate=plan.sample_rate)
    assert accountant.epsilon(plan.delta) == pytest.approx(expected.epsilon(plan.delta), rel=1e-12)


def test_load_backbone_places_weights_in_the_asked_dtype(tiny_encoder_dir: Path) -> None:
    backbone = load_backbone(str(tiny_encoder_dir), placement=resolve_placement("cpu", "float16"))
    assert backbone.dtype == torch.float16 and backbone.device == torch.device("cpu")
