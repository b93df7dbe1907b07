"""A trained classifier or generator as a standard peft adapter directory that plain ``transformers`` + ``peft`` load.

``adapter_config.json`` and ``adapter_model.safetensors`` are what ``PeftModel.from_pretrained`` reads; beside
them ``fedprompt_task.json`` says how fedprompt turns the model's output into label scores (or, for a
generation job, how it writes a completion: template or chat format, greedy decoding of at most
``max_new_tokens``, stopping at end-of-sequence, ``fedprompt.models.generator``), and encoders get their label
head in ``fedprompt_head.safetensors``.  The scoring is ``prompted_features`` plus the head:

- encoder: the unit-length mean of the last hidden states over the text's tokens (and a shallow prompt's
  virtual tokens), times ``weight`` (labels x hidden) plus ``bias``: the cosine head of
  ``fedprompt.scoring.cosine_head``, trained or frozen as the job said.
- causal: the next-token logits after the text's last token, at ``label_token_ids`` (the first token of each
  label word, ``fedprompt.scoring.verbalizer_ids``).

``prefix`` and ``lora`` are peft's own modules, saved as peft's ``save_pretrained`` saves them (their config
and ``get_peft_model_state_dict``).  The shallow prompt is saved as peft
``PROMPT_TUNING`` (``prompt_embeddings``: the whole prompt, every level in vector order).  For causal models
peft's forward places it exactly where fedprompt does (before the text).  For encoders fedprompt keeps
``[CLS]`` first and puts the prompt after it (``"prompt_position": "after_first_token"``), since the backbone
was trained with ``[CLS]`` at position 0; peft's forward would put it before ``[CLS]``, which shifts every
position and scores differently (0.602 against 0.644 in issue 31).  Moving fedprompt's placement would change
what every trained encoder prompt means and the demo's accuracy, so the export instead says where the prompt
goes and the README's loader builds the input from peft's loaded prompt (``PeftModel.get_prompt``).

Task types: ``CAUSAL_LM`` on causal models (labels are next-token logits of label words), ``FEATURE_EXTRACTION``
on encoders rather than ``SEQ_CLS``: the cosine head reads the normalised mean of all hidden states, which no
transformers sequence-classification head computes (they read ``[CLS]`` or the pooler through a plain linear
layer), so the head ships beside the adapter instead of being mapped onto one.
"""

from __future__ import annotations

import copy
import json
import typing
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from fedprompt.models.classifier import AdaptedModel, PromptClassifier
from fedprompt.models.generator import PromptGenerator

#: The file beside a peft adapter that says how label scores are read (``FORMAT`` names its layout).
TASK_FILE = "fedprompt_task.json"
#: An encoder's label head (``weight``, ``bias``), applied to the unit-length mean-pooled hidden state.
HEAD_FILE = "fedprompt_head.safetensors"
FORMAT = "fedprompt-peft-1"


def _prompt_tuning_config(model: AdaptedModel, base: str, length: int) -> Any:
    from peft import PromptTuningConfig, TaskType

    config = model.backbone.config
    return PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM if model.kind == "causal" else TaskType.FEATURE_EXTRACTION,
        num_virtual_tokens=length, token_dim=model.dim, num_transformer_submodules=1,
        num_attention_heads=int(config.num_attention_heads), num_layers=int(config.num_hidden_layers),
        base_model_name_or_path=base, inference_mode=True)


@torch.no_grad()
def save_adapter(model: AdaptedModel, out: Path, base: str, label_names: typing.Sequence[str],
                 label_words: typing.Sequence[str]) -> dict[str, Any]:
    """Write ``model``'s adapter (with its vector loaded) into the existing directory ``out`` as peft saves it,
    plus the task file and (encoders) the head; ``base`` is the base model's directory, recorded as
    ``base_model_name_or_path``.  Returns the task file's content (a generator's has no labels)."""
    if model.method == "prompt":
        shallow = typing.cast(torch.nn.Module, model.prompt)  # every level, as predict scores with them
        state = {"prompt_embeddings": shallow(1)[0]}
        config = _prompt_tuning_config(model, base, int(state["prompt_embeddings"].shape[0]))
    else:  # what peft's save_pretrained writes, without its progress bar and generic card
        state = model.peft_state_dict()
        config = copy.copy(model.peft_model.peft_config["default"])
        config.base_model_name_or_path, config.inference_mode = base, True
    config.save_pretrained(str(out))
    save_file({name: t.detach().float().cpu().contiguous() for name, t in state.items()},
              str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    task: dict[str, Any] = {
        "format": FORMAT, "kind": model.kind, "method": model.method, "template": model.template,
        "max_length": model.max_length,
        "prompt_position": ("after_first_token" if model.method == "prompt" and model.kind == "encoder"
                            else "peft"),
    }
    if isinstance(model, PromptGenerator):
        task.update(generation_settings(model))
    else:
        task.update({"task": "classification", "label_names": list(label_names), "label_words": list(label_words),
                     "scoring": ("normalize(mean(last_hidden_state over tokens and prompt)) @ weight.T + bias"
                                 if model.kind == "encoder" else "next_token_logits[last token][label_token_ids]")})
    if model.head is not None:
        save_file({"weight": model.head.weight.detach().float().cpu().contiguous(),
                   "bias": model.head.bias.detach().float().cpu().contiguous()}, str(out / HEAD_FILE))
    elif isinstance(model, PromptClassifier):
        task["label_token_ids"] = [int(i) for i in model.label_token_ids.tolist()]
    (out / TASK_FILE).write_text(json.dumps(task, indent=2) + "\n", encoding="utf-8")
    return task


def generation_settings(model: PromptGenerator) -> dict[str, Any]:
    """How ``model`` writes a completion, as the task file and model card state it."""
    return {"task": "generation", "chat": model.chat, "max_new_tokens": model.max_new_tokens, "decoding": "greedy",
            "eos_token_ids": list(model.eos),
            "stop": (f"at end-of-sequence (token ids {list(model.eos)}) or after {model.max_new_tokens} new tokens"
                     if model.eos else f"after {model.max_new_tokens} new tokens (the tokenizer has no "
                                       "end-of-sequence token)"),
            "delimiter": "the completion follows the prompt after one space unless the prompt ends in whitespace"}
