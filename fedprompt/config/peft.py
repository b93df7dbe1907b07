"""The job's ``[peft]`` section: which parameter-efficient method tunes the frozen PLM, and that method's knobs.

Split from ``job.py`` because each method brings its own vocabulary (LoRA's rank, scaling and target modules)
and its own rules against other sections (prompt levels and black-box search exist for prompts only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedprompt.config.codec import check, check_range

if TYPE_CHECKING:
    from fedprompt.config.job import JobConfig

#: ``prompt``: a shallow soft prompt (Lester et al. 2021, the FedPrompt setting); ``prefix``: trainable key/value
#: prefixes at every layer (Li & Liang 2021; P-tuning v2, Liu et al. 2022); ``lora``: low-rank updates of chosen
#: linear layers (Hu et al., "LoRA", ICLR 2022).
PEFT_METHODS = ("prompt", "prefix", "lora")
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,127}")
#: peft's shorthand for every linear layer; fedprompt takes those of the model's repeated blocks
#: (``fedprompt.models.adapters.block_linears``).
ALL_LINEAR = "all-linear"


@dataclass(frozen=True)
class PeftSection:
    """The method a job tunes and exchanges; ``prompt`` (the default) is the shallow prompt of ``[model]``.

    ``prefix`` and ``prompt`` take their length from ``model.prompt_length`` (virtual tokens).  LoRA knobs:
    ``lora_rank`` r in [1, 1024], ``lora_alpha`` in [1, 10000] (updates are scaled by alpha / r),
    ``lora_dropout`` in [0, 1) on the adapter's input, and ``lora_target_modules``: names (or name suffixes) of
    the linear layers to adapt; empty takes peft's default for the architecture (e.g. ``query``/``value`` for
    BERT, ``q_proj``/``v_proj`` for Llama), and ``["all-linear"]`` (alone) every linear layer of the model's
    blocks, whatever their names.  Every knob is checked whichever method is chosen.
    """

    method: str = "prompt"
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = ()

    def validate(self, prefix: str) -> None:
        check(self.method in PEFT_METHODS, f"{prefix}.method",
              f"must be one of {', '.join(repr(m) for m in PEFT_METHODS)}, got {self.method[:40]!r}")
        check_range(self.lora_rank, f"{prefix}.lora_rank", 1, 1024)
        check_range(self.lora_alpha, f"{prefix}.lora_alpha", 1, 10_000)
        check(0 <= self.lora_dropout < 1, f"{prefix}.lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        if self.lora_target_modules == (ALL_LINEAR,):
            return
        for i, name in enumerate(self.lora_target_modules):
            check(name != ALL_LINEAR, f"{prefix}.lora_target_modules[{i}]",
                  f"{ALL_LINEAR!r} already takes every linear layer of the blocks: give it alone, or names only")
            check(bool(_MODULE_NAME.fullmatch(name)), f"{prefix}.lora_target_modules[{i}]",
                  f"{name[:40]!r} is not a module name (letters, digits, _ and ., at most 128)")

    def check_job(self, job: JobConfig) -> None:
        """What only a shallow prompt supports: prompt levels split its tokens, and black-box search (FedBPT)
        projects a prompt that a query-only model service prepends to the input embeddings."""
        if self.method == "prompt":
            return
        check(not job.levels.enabled, "levels.enabled",
              f"prompt levels split a shallow prompt's tokens; peft.method = {self.method!r} has none "
              "(use method = 'prompt', or levels.enabled = false)")
        check(not job.blackbox.enabled, "peft.method",
              f"{self.method!r} cannot be searched black-box: FedBPT sends the model service a prompt of input "
              "embeddings, and a query-only service exposes neither per-layer prefixes nor weights to adapt "
              "(use 'prompt', or blackbox.enabled = false)")
