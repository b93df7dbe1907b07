"""Generation tasks (``task.kind = "generation"``) on a tiny random causal model: the loss covers completion
tokens only (checked by hand), exact match and ROUGE-L against known strings, a federated run that lowers the
per-token loss on a memorisable toy set, DP-SGD through Opacus, config refusals, and the BBC headline loader on
the installed files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedprompt.app import cli
from fedprompt.app.admin_client import load_prompt
from fedprompt.app.report import round_table, summary
from fedprompt.app.simulate import simulate
from fedprompt.config import DPSection, JobConfig, ModelSection, PeftSection, TaskSection, dump_toml, parse_toml
from fedprompt.data.datasets import BUILTIN, load_dataset
from fedprompt.data.formats import DataFormat, Example, chat_messages, load_file
from fedprompt.data.shards import SiteData
from fedprompt.errors import ConfigError, FileError
from fedprompt.models import build_model, load_backbone
from fedprompt.models.generator import IGNORE, PromptGenerator, text_metrics
from fedprompt.participant.dp import RecordAccountant, plan_record_dp, train_local_dp
from tests.support import tiny_job

pytestmark = [pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha"),
              pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
              pytest.mark.filterwarnings("ignore:Full backward hook is firing")]

PAIRS = [("colour of the sky", "blue"), ("colour of grass", "green"), ("colour of snow", "white"),
         ("colour of coal", "black")]


def generation_job(model_dir: Path, method: str = "prompt") -> JobConfig:
    base = tiny_job(model_dir)
    return dataclasses.replace(
        base, model=dataclasses.replace(base.model, max_length=24),
        task=TaskSection(kind="generation", template="{text} is", max_new_tokens=4),
        peft=PeftSection(method=method, lora_rank=4),
        train=dataclasses.replace(base.train, local_epochs=4, max_steps=4, batch_size=4,
                                  lr=0.01 if method == "lora" else 0.1))


def toy() -> list[Example]:
    return [Example(p, c) for p, c in PAIRS]


def test_the_loss_covers_completion_tokens_only(tiny_causal_dir: Path) -> None:
    model = build_model(generation_job(tiny_causal_dir))
    assert isinstance(model, PromptGenerator)
    ex = Example("colour of the sky", "blue")
    batch = model.encode([ex])
    prompt = model.prompt_ids(ex.text)
    completion = model.completion_ids(prompt, ex.label)
    assert batch["input_ids"][0].tolist() == prompt + completion
    assert batch["labels"][0].tolist() == [IGNORE] * len(prompt) + completion
    # By hand: the logits at position t predict token t + 1; only completion tokens count, averaged.
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"])[0]
        expected = np.mean([float(-F.log_softmax(logits[t - 1], -1)[tok])
                            for t, tok in enumerate(prompt + completion) if t >= len(prompt)])
        loss = model.summed_loss(model, [ex], torch.tensor([]), [0])
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    # Changing the prompt's tokens as labels would not change the loss: they are ignored.
    assert (batch["labels"][0][: len(prompt)] == IGNORE).all()


def test_exact_match_and_rouge_l_against_known_strings() -> None:
    metrics = text_metrics(["The cat sat", "a dog ran home", "nothing"], ["the  cat sat", "a dog went home", "x"])
    assert metrics["exact_match"] == pytest.approx(1 / 3)
    # ROUGE-L F1 of "a dog ran home" vs "a dog went home": LCS 3 of 4 and 4 tokens, so 0.75; then 1 and 0.
    assert metrics["rouge_l"] == pytest.approx((1 + 0.75 + 0) / 3)


@pytest.mark.parametrize("method", ["prompt", "lora"])
def test_a_federated_generation_job_lowers_the_per_token_loss(method: str, tiny_causal_dir: Path) -> None:
    config = generation_job(tiny_causal_dir, method)
    sites = [SiteData(toy(), toy()) for _ in range(3)]  # memorisable: the test split is the training data
    report = simulate(config, sites)
    assert report["state"] == "done" and report["task"] == "generation"
    first, last = report["zero_shot_loss"], report["rounds"][-1]["loss"]
    assert last < first
    assert all(0 <= r["rouge_l"] <= 1 and 0 <= r["exact_match"] <= 1 for r in report["rounds"])
    assert report["final_rouge_l"] == report["rounds"][-1]["rouge_l"]
    assert "rouge_l" in round_table(report) and "accuracy" not in round_table(report)
    assert summary(report).startswith("exact_match ")


def test_predict_prints_the_exported_generators_completions(tmp_path: Path, tiny_causal_dir: Path, cli_logs: None,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    config = dataclasses.replace(generation_job(tiny_causal_dir, "lora"),
                                 job=dataclasses.replace(generation_job(tiny_causal_dir).job, rounds=1))
    out = tmp_path / "generator.safetensors"
    simulate(config, [SiteData(toy(), toy()) for _ in range(3)], export=out)
    capsys.readouterr()
    assert cli.main(["predict", "--prompt", str(out), "--batch-size", "1", "colour of snow", "colour of coal"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    vector, _ = load_prompt(out)
    model = build_model(config)
    model.set_vector(vector)
    assert isinstance(model, PromptGenerator)
    assert lines == [{"text": t, "completion": c} for t, c in
                     zip(["colour of snow", "colour of coal"], model.generate(["colour of snow", "colour of coal"]),
                         strict=True)]
    assert cli.main(["predict", "--prompt", str(out), "--batch-size", "0", "colour of snow"]) != 0
    assert "--batch-size" in capsys.readouterr().err


def test_dp_sgd_trains_a_generator(tiny_causal_dir: Path) -> None:
    config = dataclasses.replace(generation_job(tiny_causal_dir, "lora"),
                                 dp=DPSection(enabled=True, noise_multiplier=1.0))
    model = build_model(config)
    examples = toy() * 5
    plan = plan_record_dp(config.dp, config.train, config.job.rounds, len(examples))
    accountant = RecordAccountant("rdp", None)
    start = model.get_vector()
    result = train_local_dp(model, examples, [], config.train, plan, accountant)
    assert result.steps == plan.steps_per_round and np.isfinite(result.loss)
    assert not np.allclose(start, model.get_vector())
    assert accountant.epsilon(plan.delta) > 0


@pytest.mark.parametrize("method", ["prompt", "prefix", "lora"])
def test_greedy_generation_is_the_argmax_of_the_training_forward(method: str, tiny_causal_dir: Path) -> None:
    """Decoding with the key/value cache writes, token by token, what the full forward (the one training uses,
    soft prompt or prefix included) ranks first, and stops after max_new_tokens."""
    model = build_model(generation_job(tiny_causal_dir, method))
    assert isinstance(model, PromptGenerator)
    prompt = "colour of the sky"
    [written] = model.generate([prompt])
    ids = model.prompt_ids(prompt)
    expected: list[int] = []
    with torch.no_grad():
        for _ in range(model.max_new_tokens):
            row = torch.tensor([ids + expected])
            token = int(model(row, torch.ones_like(row))[0, -1].argmax())
            if token in model.eos:
                break
            expected.append(token)
    assert written == str(model.tokenizer.decode(expected, skip_special_tokens=True)).strip()
    assert len(expected) <= model.max_new_tokens


PROMPTS = ["colour of the sky", "a much longer prompt about the colour of fresh green grass in spring", "snow",
           "what colour is coal when it burns", "x"]


@pytest.mark.parametrize("method", ["prompt", "prefix", "lora"])
def test_batched_decoding_writes_what_decoding_one_prompt_at_a_time_writes(method: str, tiny_causal_dir: Path) -> None:
    """Left-padded batches (prompts of 1 to 16 tokens, so most rows are padded) complete every prompt as decoding
    it alone does, with a random adapter so that the soft prompt, prefix or LoRA steers the output; and with an
    end-of-sequence token that some rows write first, those rows stop while the others go on."""
    config = generation_job(tiny_causal_dir, method)
    model = build_model(dataclasses.replace(config, task=dataclasses.replace(config.task, max_new_tokens=6)))
    assert isinstance(model, PromptGenerator)
    model.set_vector((model.get_vector() + np.random.default_rng(1).normal(0, 0.5, model.vector_size))
                     .astype(np.float32))
    alone = [model.generate([prompt], batch_size=1)[0] for prompt in PROMPTS]
    assert model.generate(PROMPTS, batch_size=len(PROMPTS)) == alone
    assert model.generate(PROMPTS, batch_size=2) == alone
    assert all(alone)  # the tiny tokenizer has no end-of-sequence token: every row writes max_new_tokens
    row = torch.tensor([model.prompt_ids(PROMPTS[0])])
    with torch.no_grad():
        model.eos = [int(model(row, torch.ones_like(row))[0, -1].argmax())]  # what the first prompt writes first
    stopped = [model.generate([prompt], batch_size=1)[0] for prompt in PROMPTS]
    assert stopped[0] == "" and any(stopped)
    assert model.generate(PROMPTS, batch_size=len(PROMPTS)) == stopped


@pytest.mark.parametrize("extra, key", [
    ("[task]\nkind = 'translation'\n", "task.kind"),
    ("[task]\nkind = 'generation'\nmax_new_tokens = 0\n", "task.max_new_tokens"),
    ("[model]\nkind = 'encoder'\n[task]\nkind = 'generation'\n", "task.kind"),
    ("[task]\nkind = 'generation'\n[blackbox]\nenabled = true\n[model]\ntrain_head = false\n", "task.kind"),
    ("[task]\nkind = 'generation'\n[levels]\nenabled = true\nglobal_tokens = 4\n", "levels.enabled"),
])
def test_generation_config_refusals_name_the_key(extra: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        parse_toml(extra, JobConfig)


def test_an_encoder_backbone_cannot_generate(tiny_encoder_dir: Path) -> None:
    config = dataclasses.replace(generation_job(tiny_encoder_dir), model=ModelSection(path=str(tiny_encoder_dir)))
    with pytest.raises(ConfigError, match="task.kind"):
        build_model(config, load_backbone(str(tiny_encoder_dir)))


def test_a_generation_job_round_trips_its_config(tiny_causal_dir: Path) -> None:
    config = generation_job(tiny_causal_dir)
    assert parse_toml(dump_toml(config), JobConfig) == config


def test_the_bbc_headline_loader_reads_the_installed_articles() -> None:
    loaded = load_dataset("bbc_headlines")
    assert BUILTIN["bbc_headlines"].kind == "generation"
    assert loaded.report.rows == 2225  # the BBC News corpus's article count
    assert len(loaded.examples) == loaded.report.rows - loaded.report.duplicates - loaded.report.conflict_rows
    assert all(ex.text and ex.label for ex in loaded.examples)
    assert all("\n" not in ex.label and len(ex.label) < len(ex.text) for ex in loaded.examples)
    first = {ex.label: ex.text for ex in loaded.examples}
    assert first["Ad sales boost Time Warner profit"].startswith("Quarterly profits at US media giant TimeWarner")


CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def test_chat_rows_become_prompt_messages_and_bad_ones_are_counted(tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sky?"},
                          {"role": "assistant", "content": " blue "}]},
            {"messages": [{"role": "user", "content": "Grass?"}, {"role": "user", "content": "green"}]},
            {"messages": "not a list"}]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    with pytest.raises(FileError, match="2 of 3 rows"):
        load_file(path)
    loaded = load_file(path, DataFormat(skip_bad_rows=True))
    assert loaded.report.bad_rows == 2 and len(loaded.examples) == 1
    ex = loaded.examples[0]
    assert ex.label == "blue"
    assert chat_messages(ex.text) == rows[0]["messages"][:2]  # type: ignore[index]


def test_a_chat_job_renders_the_tokenizers_chat_template(tiny_causal_dir: Path) -> None:
    config = generation_job(tiny_causal_dir)
    config = dataclasses.replace(config, task=dataclasses.replace(config.task, chat=True))
    backbone = load_backbone(str(tiny_causal_dir))
    with pytest.raises(ConfigError, match="task.chat"):
        build_model(config, backbone)  # the tiny tokenizer has no chat template
    backbone.tokenizer.chat_template = CHAT_TEMPLATE
    model = build_model(config, backbone)
    assert isinstance(model, PromptGenerator)
    messages = [{"role": "user", "content": "colour of the sky"}]
    rendered = backbone.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == "<user>colour of the sky\n<assistant>"
    ids = model.prompt_ids(json.dumps(messages))
    assert ids == backbone.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert len(model.generate([json.dumps(messages)])) == 1
    with pytest.raises(ConfigError, match="task.chat"):
        model.prompt_ids("a plain prompt in a chat job")


def test_chat_is_for_generation_jobs() -> None:
    with pytest.raises(ConfigError, match="task.chat"):
        parse_toml("[task]\nchat = true\n", JobConfig)


def test_simulate_deals_the_bbc_headlines_to_sites_and_prints_generation_metrics(
        tiny_causal_dir: Path, cli_logs: None, capsys: pytest.CaptureFixture[str]) -> None:
    sets = [f"model.path='{tiny_causal_dir}'", "model.kind='causal'", "model.max_length=32", "job.rounds=1",
            "task.kind='generation'", "task.template='{text} Headline:'", "task.max_new_tokens=3",
            "train.max_steps=1", "train.batch_size=2", "simulation.dataset='bbc_headlines'",
            "simulation.participants=2", "simulation.test_size=4"]
    args = ["simulate", "--no-progress", "--threads", "1", *(a for s in sets for a in ("--set", s))]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "exact_match" in out and "rouge_l" in out and "accuracy" not in out
    assert cli.main([*args, "--set", "simulation.partition.scheme='dirichlet'"]) == 2
    assert "simulation.partition.scheme" in capsys.readouterr().err
