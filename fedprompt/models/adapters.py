"""Deep prompts and LoRA through the ``peft`` library, attached to a frozen backbone.

``prefix``: trainable key/value prefixes at every attention layer (Li & Liang, "Prefix-Tuning", ACL 2021; without
the reparametrising MLP, as P-tuning v2: Liu et al., ACL 2022), peft's ``PrefixEncoder``, an ``nn.Embedding``
indexed per batch row, for which Opacus computes per-example gradients like the shallow prompt's.  ``lora``:
low-rank updates ``B A`` beside chosen linear layers (Hu et al., "LoRA", ICLR 2022), peft's ``lora.Linear``
whose trainable parts are two plain ``nn.Linear`` modules, which Opacus's linear grad sampler covers.  Both are
peft's own modules, so the trained state is a standard peft state dict (``get_peft_model_state_dict``).
The shallow prompt (``method = "prompt"``) stays fedprompt's own ``SoftPrompt``: peft's prompt tuning prepends
the virtual tokens before ``[CLS]``, where fedprompt places them after it (the pooled sentence embedding the
cosine head reads), and a prompt initialised from vocabulary rows is what the model service and black-box
search project from (``fedprompt.scoring.prompt_init_ids``).

The frozen PLM keeps its dtype; peft keeps adapter weights in float32 (``autocast_adapter_dtype``) and casts at
the boundary (LoRA casts its input to float32 and its output back; a prefix is cast to the backbone's dtype).
"""

from __future__ import annotations

from typing import Any

import torch
from peft import LoraConfig, PeftConfig, PeftModel, PrefixTuningConfig, TaskType, get_peft_model

from fedprompt.config import ALL_LINEAR, PeftSection
from fedprompt.errors import ConfigError
from fedprompt.models.backbone import Backbone


def block_linears(model: torch.nn.Module) -> list[str]:
    """``lora_target_modules = ["all-linear"]`` resolved: every ``nn.Linear`` inside the model's repeated blocks
    (a module path with a layer index), named by its path after the last index (``self_attn.q_proj``,
    ``attention.output.dense``), which peft matches as a suffix in every block.  Not peft's own ``"all-linear"``:
    that also adapts an encoder's pooler, which the classifier does not read, so its adapter would get no
    gradient (and Opacus no per-example one) yet be exchanged every round."""
    names: set[str] = set()
    for name, module in model.named_modules():
        parts = name.split(".")
        indices = [i for i, part in enumerate(parts) if part.isdigit()]
        if isinstance(module, torch.nn.Linear) and indices and indices[-1] < len(parts) - 1:
            names.add(".".join(parts[indices[-1] + 1:]))
    if not names:
        raise ConfigError(f"peft.lora_target_modules: {ALL_LINEAR!r} found no linear layer in numbered blocks of "
                          f"{type(model).__name__}; name the layers to adapt")
    return sorted(names)


def peft_config(section: PeftSection, kind: str, virtual_tokens: int, model: torch.nn.Module) -> PeftConfig:
    """The peft config of a job's ``[peft]`` method (``prefix`` or ``lora``) for ``model`` (the frozen PLM);
    ``virtual_tokens`` is a prefix's length."""
    if section.method == "lora":
        targets = (block_linears(model) if section.lora_target_modules == (ALL_LINEAR,)
                   else list(section.lora_target_modules) or None)
        return LoraConfig(r=section.lora_rank, lora_alpha=section.lora_alpha, lora_dropout=section.lora_dropout,
                          target_modules=targets, bias="none")
    if section.method == "prefix":
        task = TaskType.CAUSAL_LM if kind == "causal" else TaskType.FEATURE_EXTRACTION
        return PrefixTuningConfig(task_type=task, num_virtual_tokens=virtual_tokens, prefix_projection=False)
    raise ConfigError(f"peft.method: {section.method!r} has no peft adapter (the shallow prompt is fedprompt's own)")


def attach(backbone: Backbone, config: PeftConfig, seed: int) -> PeftModel:
    """The backbone wrapped by peft with ``config``; once per backbone, so participants that share a loaded PLM in
    one process (simulations) share the adapter too: LoRA rewrites the backbone's layers in place, and every
    learner loads its vector before it trains, scores or evaluates, as with one model per participant.  A second,
    different adapter on the same backbone would change the first one's outputs, so it is refused.  The initial
    adapter (LoRA's A, a prefix) is drawn from ``seed`` (the job's), so every site builds the same one."""
    key = repr(config.to_dict())
    if key in backbone.adapters:
        return backbone.adapters[key]
    if backbone.adapters:
        raise ConfigError("peft: this loaded backbone already carries another adapter; load the model again")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            wrapped = get_peft_model(backbone.model, config)
    except ValueError as exc:  # e.g. target modules the model does not have
        raise ConfigError(f"peft: {exc}") from exc
    backbone.adapters[key] = wrapped
    return wrapped


def adapter_parameters(wrapped: PeftModel) -> list[torch.nn.Parameter]:
    """The adapter's trainable tensors in a fixed order (peft's parameter names, sorted as the module tree)."""
    return [p for _, p in wrapped.named_parameters() if p.requires_grad]


def prefix_cache(wrapped: PeftModel, batch_size: int) -> tuple[Any, int]:
    """A fresh key/value cache holding the prefix for ``batch_size`` rows (peft's ``get_prompt``: one per forward,
    since the model appends to it), and the prefix length."""
    return wrapped.get_prompt(batch_size=batch_size), int(wrapped.active_peft_config.num_virtual_tokens)
