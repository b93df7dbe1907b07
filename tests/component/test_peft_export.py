"""Adapters any Hugging Face user can load (issue 31): ``--format peft`` writes a standard peft adapter
directory that ``PeftModel.from_pretrained`` loads on the same base model, and the README's loading snippet
(run here as pasted) gives fedprompt's own label logits to within 1e-4 for every method on both backbone
kinds; ``admin export`` (plaintext jobs, from a real coordinator) and ``participant export`` (a key holder's
state after a real encrypted, DP-SGD simulation) write a model card with the run's facts; bad calls are
refused in one line and write nothing."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedprompt.app.adapter_export import CardFacts, export_peft
from fedprompt.app.admin_client import AdminClient
from fedprompt.app.cli import main
from fedprompt.app.peft_roundtrip import max_diff_to_fedprompt, readme_loader
from fedprompt.app.simulate import simulate
from fedprompt.config import DPSection, HESection, JobConfig, PeftSection, TaskSection, dump_toml
from fedprompt.locations import LATEST_PROMPT
from fedprompt.logs import configure
from fedprompt.models import build_classifier, build_model
from fedprompt.models.generator import PromptGenerator
from fedprompt.participant.grpc_link import GrpcLink
from fedprompt.promptfile import load_prompt
from fedprompt.protocol import Payload
from fedprompt.wire.payload import FLOAT32, encode_vector
from tests.support import LiveCoordinator, levelled, tiny_job, toy_sites

TEXTS = ["A moving, beautifully shot film.", "dull", "Neither good nor bad, and far too long to sit through."]
TOLERANCE = 1e-4

pytestmark = [pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha"),
              pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
              pytest.mark.filterwarnings("ignore:Full backward hook is firing")]


def trained_like(config: JobConfig) -> np.ndarray:
    """The job's initial vector moved as training would (LoRA's B starts at zero; the head moves too)."""
    vector = build_classifier(config).get_vector()
    return vector + np.random.default_rng(7).normal(0, 0.05, vector.size).astype(np.float32)


@pytest.mark.parametrize("method, targets", [("prompt", ()), ("prefix", ()), ("lora", ()), ("lora", ("all-linear",))])
@pytest.mark.parametrize("kind", ["encoder", "causal"])
def test_peft_loads_the_export_and_scores_as_fedprompt(kind: str, method: str, targets: tuple[str, ...],
                                                       tiny_encoder_dir: Path, tiny_causal_dir: Path,
                                                       tmp_path: Path) -> None:
    base = tiny_encoder_dir if kind == "encoder" else tiny_causal_dir
    config = dataclasses.replace(tiny_job(base), peft=PeftSection(method=method, lora_rank=4,
                                                                  lora_target_modules=targets))
    vector = trained_like(config)
    out = export_peft(vector, dump_toml(config), tmp_path / "adapter", CardFacts("job-1", 3, "a test"), "0.0-test")
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "fedprompt_task.json", "README.md"} <= names
    assert ("fedprompt_head.safetensors" in names) == (kind == "encoder")
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["peft_type"] == {"prompt": "PROMPT_TUNING", "prefix": "PREFIX_TUNING", "lora": "LORA"}[method]
    assert adapter["base_model_name_or_path"] == str(base)
    if method != "lora":
        assert adapter["task_type"] == ("CAUSAL_LM" if kind == "causal" else "FEATURE_EXTRACTION")
    if targets:  # the layers themselves, so the adapter needs fedprompt for nothing
        assert len(adapter["target_modules"]) >= 4 and "all-linear" not in adapter["target_modules"]
        assert "target modules every linear layer of the model's blocks" in (out / "README.md").read_text()
    diff = max_diff_to_fedprompt(vector, config, base, out, TEXTS)
    assert diff <= TOLERANCE, f"{kind}/{method}: {diff}"


def test_a_levelled_prompt_exports_every_level(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    """``predict`` scores with the whole levelled prompt (the personal level at its initial value), so the
    export holds all levels in vector order."""
    config = levelled(tiny_job(tiny_encoder_dir))
    vector = trained_like(config)
    out = export_peft(vector, dump_toml(config), tmp_path / "adapter", CardFacts("job-1", 1, "a test"), "0.0-test")
    assert json.loads((out / "adapter_config.json").read_text())["num_virtual_tokens"] == 4
    assert max_diff_to_fedprompt(vector, config, tiny_encoder_dir, out, TEXTS) <= TOLERANCE


@pytest.mark.parametrize("method", ["prompt", "prefix", "lora"])
def test_a_generation_export_states_its_generation_settings_and_loads_in_peft(method: str, tiny_causal_dir: Path,
                                                                              tmp_path: Path) -> None:
    """A generation job's card and task file say how completions are written (template, max_new_tokens, greedy,
    the stop rule) and name no labels; PeftModel on the export gives the generator's next-token logits."""
    base = tiny_job(tiny_causal_dir)
    config = dataclasses.replace(base, peft=PeftSection(method=method, lora_rank=4),
                                 task=TaskSection(kind="generation", template="Q: {text}\nA:", max_new_tokens=7))
    model = build_model(config)
    assert isinstance(model, PromptGenerator)
    vector = model.get_vector() + np.random.default_rng(7).normal(0, 0.05, model.vector_size).astype(np.float32)
    out = export_peft(vector, dump_toml(config), tmp_path / "adapter", CardFacts("job-1", 3, "a test"), "0.0-test")
    rows = card_rows(out)
    assert rows["task"] == "generation: a completion of each prompt"
    assert rows["prompt format"] == f'`"Q: {{text}}\\nA:"` (prompt cut to {config.model.max_length} tokens)'
    assert rows["max_new_tokens"] == "7" and rows["decoding"] == "greedy"
    assert rows["stop rule"] == "after 7 new tokens (the tokenizer has no end-of-sequence token)"
    assert "label words" not in rows and "labels" not in rows["task"]
    assert "do_sample=False, max_new_tokens=7" in (out / "README.md").read_text()
    task = json.loads((out / "fedprompt_task.json").read_text())
    assert task["task"] == "generation" and task["decoding"] == "greedy" and task["max_new_tokens"] == 7
    assert task["chat"] is False and task["template"] == "Q: {text}\nA:" and "label_names" not in task
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model.set_vector(vector)
    ids = torch.tensor([model.prompt_ids("colour of the sky")])
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_causal_dir), out).eval()
    with torch.no_grad():
        ours = model(ids, torch.ones_like(ids))[0, -1]
        theirs = loaded(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1]
    assert float((ours - theirs).abs().max()) <= TOLERANCE


def test_a_chat_generation_card_names_the_chat_template(tiny_causal_dir: Path, tmp_path: Path) -> None:
    base = tiny_job(tiny_causal_dir)
    config = dataclasses.replace(base, task=TaskSection(kind="generation", chat=True, max_new_tokens=5))
    model_dir = tmp_path / "chat-model"
    model_dir.mkdir()
    for path in tiny_causal_dir.iterdir():
        (model_dir / path.name).write_bytes(path.read_bytes())
    tokenizer = json.loads((model_dir / "tokenizer_config.json").read_text())
    tokenizer.update(chat_template="{% for m in messages %}{{ m['content'] }}\n{% endfor %}", eos_token="[SEP]")
    (model_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, path=str(model_dir)))
    out = export_peft(build_model(config).get_vector(), dump_toml(config), tmp_path / "adapter",
                      CardFacts("job-1", 1, "a test"), "0.0-test")
    rows = card_rows(out)
    assert rows["prompt format"].startswith("chat messages rendered by the base tokenizer's chat template")
    assert rows["stop rule"] == "at end-of-sequence (token ids [102]) or after 5 new tokens"


def weights_digest(model_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(model_dir.glob("*.safetensors")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def card_rows(out: Path) -> dict[str, str]:
    """The model card's table as {field: value}."""
    rows = [line.strip("|").split("|", 1) for line in (out / "README.md").read_text().splitlines()
            if line.startswith("| ") and "|---" not in line]
    return {key.strip(): value.strip() for key, value in rows if key.strip()}


def test_the_card_reports_privacy_spent_at_both_levels(tiny_causal_dir: Path, tmp_path: Path) -> None:
    config = dataclasses.replace(tiny_job(tiny_causal_dir), dp=DPSection(enabled=True, epsilon=8.0, delta=1e-5,
                                                                          participant_noise_multiplier=1.0))
    facts = CardFacts("job-9", 4, "a test", rounds_completed=4, participants=5,
                      privacy={"epsilon": 2.5, "delta": 1e-5, "participant_epsilon": 11.25, "participant_delta": 1e-3})
    out = export_peft(trained_like(config), dump_toml(config), tmp_path / "dp", facts, "9.9.9")
    rows = card_rows(out)
    assert rows["record-level DP"] == "ε = 2.5, δ = 1e-05 spent (budget ε = 8)"
    assert rows["participant-level DP"] == "ε = 11.25, δ = 0.001 spent"
    assert rows["rounds completed"] == "4 of 2" and rows["participants"] == "5"
    assert rows["homomorphic encryption"] == "off (plaintext aggregation)"
    members = ("site-0", "site-1", "site-2", "site-3", "site-4")
    threshold = dataclasses.replace(config, job=dataclasses.replace(config.job, allowed_participants=members),
                                    he=HESection(enabled=True, mode="threshold", threshold=3))
    rows = card_rows(export_peft(trained_like(config), dump_toml(threshold), tmp_path / "t", facts, "9.9.9"))
    assert rows["homomorphic encryption"].startswith("threshold CKKS: any 3 of the 5 members decrypt")
    assert rows["label words"] == "bad, good" and rows["backbone kind"] == "causal"
    assert rows["fedprompt version"] == "9.9.9"


def fedprompt(capfd: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``fedprompt ARGV`` through ``main``: exit code, stdout, stderr."""
    capfd.readouterr()
    try:
        try:
            code = main(["--log-level", "error", *argv])
        except SystemExit as exc:  # a usage error
            code = int(exc.code or 0)
        out, err = capfd.readouterr()
    finally:
        with capfd.disabled():
            configure("warning")
    return code, out, err


def test_admin_exports_a_plaintext_jobs_global_as_a_peft_adapter(tiny_encoder_dir: Path, tmp_path: Path,
                                                                 capfd: pytest.CaptureFixture[str]) -> None:
    config = dataclasses.replace(tiny_job(tiny_encoder_dir, rounds=2, participants_per_round=3),
                                 peft=PeftSection(method="lora", lora_rank=2))
    start = trained_like(config)
    with LiveCoordinator(tmp_path / "coord") as coordinator:
        admin = AdminClient(coordinator.target)
        links = {name: GrpcLink(coordinator.target, name, give_up_after_s=5) for name in ("a", "b", "c")}
        try:
            job_id = admin.create_job(dump_toml(config))
            admin_cli = ("admin", "--insecure", "--coordinator", coordinator.target, "export", job_id)
            empty = tmp_path / "empty"
            code, out, err = fedprompt(capfd, *admin_cli, "--format", "peft", "--out", str(empty))
            assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
            assert "has no global version" in err or "no global" in err, err
            assert not empty.exists()
            for link in links.values():
                link.join(job_id, 30, 4, start.size)
            links["a"].upload(Payload(job_id, 0, FLOAT32, start.size, encode_vector(start)))
            admin.start(job_id)
            for i, link in enumerate(links.values()):
                moved = start + np.float32(0.01 * (i + 1))
                link.upload(Payload(job_id, 1, FLOAT32, start.size, encode_vector(moved), 10))
            assert admin.status(job_id).global_version == 1
            vector, _ = load_prompt(admin.export(job_id, tmp_path / "v1.safetensors"))

            adapter = tmp_path / "adapter"
            code, out, err = fedprompt(capfd, *admin_cli, "--format", "peft", "--out", str(adapter))
            assert (code, out) == (0, f"wrote {adapter}\n"), err
            assert max_diff_to_fedprompt(vector, config, tiny_encoder_dir, adapter, TEXTS) <= TOLERANCE
            code, out, err = fedprompt(capfd, "predict", "--prompt", str(tmp_path / "v1.safetensors"), "--device",
                                       "cpu", *TEXTS)
            assert code == 0, err
            predicted = [json.loads(line) for line in out.splitlines()]
            loader = readme_loader(tiny_encoder_dir, adapter)
            loaded = loader["load_exported"](str(tiny_encoder_dir), str(adapter))
            for text, line in zip(TEXTS, predicted, strict=True):
                scores = torch.softmax(loader["label_logits"](*loaded, text), -1)
                assert line["label"] == ["neg", "pos"][int(scores.argmax())]
                assert abs(line["confidence"] - float(scores.max())) <= 5e-5  # predict prints 4 decimals
            rows = card_rows(adapter)
            assert rows["base model"] == f"`{tiny_encoder_dir.name}` (`{tiny_encoder_dir}`)"
            assert rows["base weights SHA-256"] == f"`{weights_digest(tiny_encoder_dir)}`"
            assert rows["method"].startswith("lora: rank 2, alpha 16")
            assert rows["task"] == "classification: labels neg, pos" and rows["template"] == '`"{text}"`'
            assert rows["rounds completed"] == "1 of 2" and rows["participants"] == "3"
            assert rows["record-level DP"] == "off" and rows["participant-level DP"] == "off"
            assert rows["homomorphic encryption"] == "off (plaintext aggregation)"
            assert rows["fedprompt version"]
            exported = datetime.datetime.strptime(rows["exported"], "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=datetime.UTC)
            assert abs((datetime.datetime.now(datetime.UTC) - exported).total_seconds()) < 600
            assert f"job `{job_id}`, global version 1" in (adapter / "README.md").read_text()

            listing = sorted(p.name for p in adapter.iterdir())
            a_file = tmp_path / "a-file"
            a_file.write_text("keep me")
            for argv, why in ((("--format", "peft", "--out", str(adapter)), "directory is not empty"),
                              (("--format", "peft", "--out", str(a_file)), "exists and is not a directory"),
                              (("--format", "onnx", "--out", str(tmp_path / "x")), "invalid choice: 'onnx'")):
                code, out, err = fedprompt(capfd, *admin_cli, *argv)
                assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and why in err, err
            assert sorted(p.name for p in adapter.iterdir()) == listing and a_file.read_text() == "keep me"
            assert not (tmp_path / "x").exists()
        finally:
            for link in links.values():
                link.close()
            admin.close()


def test_a_key_holder_exports_the_encrypted_jobs_global_it_decrypted(tiny_causal_dir: Path, tmp_path: Path,
                                                                     capfd: pytest.CaptureFixture[str]) -> None:
    config = dataclasses.replace(tiny_job(tiny_causal_dir, rounds=1), he=HESection(enabled=True, mode="single_key"),
                                 dp=DPSection(enabled=True, epsilon=50.0, delta=1e-5),
                                 peft=PeftSection(method="prefix"))
    report = simulate(config, toy_sites(), state_root=tmp_path / "sites")
    assert report["state"] == "done"
    state = next(p for p in sorted((tmp_path / "sites").iterdir()) if (p / LATEST_PROMPT).exists())
    vector, _ = load_prompt(state / LATEST_PROMPT)
    adapter = tmp_path / "adapter"
    code, out, err = fedprompt(capfd, "participant", "export", "--state-dir", str(state), "--out", str(adapter))
    assert (code, out) == (0, f"wrote {adapter}\n"), err
    assert max_diff_to_fedprompt(vector, config, tiny_causal_dir, adapter, TEXTS) <= TOLERANCE
    rows = card_rows(adapter)
    assert rows["homomorphic encryption"].startswith("single-key CKKS (TenSEAL)")
    epsilon = float(rows["record-level DP"].split("ε = ", 1)[1].split(",", 1)[0])
    assert 0 < epsilon <= 50 and "δ = 1e-05 spent" in rows["record-level DP"]
    assert rows["rounds completed"] == "1 of 1" and rows["participants"] == "not known here"
    assert "the state of " in (adapter / "README.md").read_text()

    copy = tmp_path / "copy.safetensors"
    code, out, err = fedprompt(capfd, "participant", "export", "--state-dir", str(state), "--format", "prompt",
                               "--out", str(copy))
    assert (code, out) == (0, f"wrote {copy}\n"), err
    np.testing.assert_array_equal(load_prompt(copy)[0], vector)

    nothing = tmp_path / "fresh-state"
    nothing.mkdir()
    code, out, err = fedprompt(capfd, "participant", "export", "--state-dir", str(nothing), "--out",
                               str(tmp_path / "never"))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "holds no global version" in err
    assert not (tmp_path / "never").exists()
