"""PEFT methods chosen per job (``[peft]``): the config names a bad key; prefix and LoRA are refused where only a
shallow prompt works (prompt levels, black-box search)."""

from __future__ import annotations

import pytest

from fedprompt.config import JobConfig, PeftSection, dump_toml, parse_toml
from fedprompt.errors import ConfigError


@pytest.mark.parametrize("lines, key", [
    ("method = 'ia3'", "peft.method"),
    ("lora_rank = 0", "peft.lora_rank"),
    ("lora_alpha = 0", "peft.lora_alpha"),
    ("lora_dropout = 1.0", "peft.lora_dropout"),
    ("lora_target_modules = ['q_proj', '../x']", r"peft.lora_target_modules\[1\]"),
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
