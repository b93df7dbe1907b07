"""Smoke mode (``fedprompt bench NAME --smoke``): a bench's own code path on a tiny random model and a handful
of examples, so the test suite runs every bench in seconds and a bench that crashes or loses a report key
fails CI (issue 29).  Its figures mean nothing; its report's keys and shapes are the real ones.

The tiny models are built here, from a config, with MiniLM's tokenizer (installed by ``make setup``): the
offline rule forbids downloading one, and the unit tests' model fixtures build theirs with the same function.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from fedprompt.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from fedprompt.app.demo import DemoOptions
    from fedprompt.config import JobConfig
    from fedprompt.models import Backbone

SizeT = TypeVar("SizeT", bound="DataclassInstance")

_BUILT: dict[str, Path] = {}


def make_tiny_model(out: Path, kind: str = "encoder", seed: int = 0) -> Path:
    """A randomly initialised 2-layer model (a BERT encoder, or a Llama decoder for ``kind="causal"``) with
    MiniLM's tokenizer, saved as a local Hugging Face directory."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    from fedprompt.models.backbone import resolve_model_path

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


def tiny_model(kind: str = "encoder") -> str:
    """The path of a tiny model of ``kind``, built once per process into a directory removed at exit."""
    if kind not in _BUILT:
        root = Path(tempfile.mkdtemp(prefix=f"fedprompt-smoke-{kind}-"))
        atexit.register(shutil.rmtree, root, True)
        _BUILT[kind] = make_tiny_model(root, kind)
    return str(_BUILT[kind])


def on_tiny_model(config: JobConfig, kind: str = "encoder") -> JobConfig:
    """``config`` with its backbone replaced by the tiny model of ``kind`` and every other setting (prompt, task,
    HE, DP, levels) kept, so that a bench's smoke run goes through the job it measures, only faster."""
    return dataclasses.replace(config, model=dataclasses.replace(config.model, path=tiny_model(kind)))


def demo_bench_job(args: argparse.Namespace, options: DemoOptions, threads: int) -> tuple[JobConfig, Backbone]:
    """The demo's job as ``options`` shape it (on the tiny model with ``--smoke``) and its backbone, loaded once
    for every run of the bench; torch on ``threads`` threads.  The benches that measure the demo's own job
    (federated, dp, he) start here."""
    import torch

    from fedprompt.app.demo import demo_job
    from fedprompt.models import load_backbone

    torch.set_num_threads(threads)
    base = demo_job(options)
    if args.smoke:
        base = on_tiny_model(base)
    return base, load_backbone(base.model.path)


def run_size(args: argparse.Namespace, full: SizeT, smoke: SizeT, *options: str) -> SizeT:
    """A bench's run size (a frozen dataclass of its sizes): ``smoke`` with ``--smoke``, else ``full``, with each
    field named in ``options`` replaced by the command line's value where it gave one.  So ``--smoke --waves 2`` is
    the smoke run with two waves, and a bench's full defaults sit in one place, beside its smoke ones.  Every
    such option is a count, so one below 1 is a ``ConfigError`` naming it."""
    given = {name: value for name in options if (value := getattr(args, name)) is not None}
    for name, value in given.items():
        if value < 1:
            raise ConfigError(f"--{name}: must be >= 1, got {value}")
    return dataclasses.replace(smoke if args.smoke else full, **given)
