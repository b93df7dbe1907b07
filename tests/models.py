"""Tiny models for tests that need a real backbone: randomly initialised, built from a config (no download).

Kept apart from ``tests.support`` because building them imports torch and transformers, which tests of pure
maths, crypto and the coordinator never load (``tests/unit/test_torch_free.py``)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from fedprompt.models.backbone import resolve_model_path


def make_tiny_model(out: Path, kind: str = "encoder", seed: int = 0) -> Path:
    """A randomly initialised 2-layer model with MiniLM's tokenizer, saved as a local HF directory."""
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("builtin:minilm"))
    model: BertModel | LlamaForCausalLM
    if kind == "encoder":
        model = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=128))
        model.config.architectures = ["BertModel"]
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                                             max_position_embeddings=128, pad_token_id=0))
        model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
