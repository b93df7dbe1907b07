"""Soft-prompt classifiers over a frozen backbone: the only trainable (and exchanged) tensors are the prompt
and, for encoders, a tiny label head.

Prompt tuning follows Lester et al., "The Power of Scale for Parameter-Efficient Prompt Tuning" (2021): N
virtual token embeddings are prepended to the input embeddings and learned while the PLM stays frozen.
The prompt is an ``nn.Embedding`` indexed by ``arange(N)`` per example, a module Opacus already computes
per-sample gradients for, so DP-SGD costs nothing for the frozen PLM.
"""

from __future__ import annotations

import contextlib
import inspect
import typing
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers import PreTrainedModel

from fedprompt.config import PeftSection
from fedprompt.data.formats import Example
from fedprompt.errors import ConfigError, InvalidUpdate
from fedprompt.models.backbone import Backbone
from fedprompt.scoring import cosine_head, length_batches, prompt_init_ids, verbalizer_ids
from fedprompt.wire.levels import GLOBAL, PERSONAL

if TYPE_CHECKING:  # peft loads only for the methods that use it
    from peft import PeftModel


class SoftPrompt(nn.Module):
    """``length`` trainable virtual-token embeddings, returned per batch row as ``(B, length, dim)``."""

    positions: torch.Tensor

    def __init__(self, init: torch.Tensor) -> None:
        super().__init__()
        self.embedding = nn.Embedding(init.shape[0], init.shape[1])
        with torch.no_grad():
            self.embedding.weight.copy_(init)
        self.register_buffer("positions", torch.arange(init.shape[0]), persistent=False)

    @property
    def length(self) -> int:
        return int(self.embedding.num_embeddings)

    def forward(self, batch_size: int) -> torch.Tensor:
        return self.embedding(self.positions.unsqueeze(0).expand(batch_size, -1))


class LevelledPrompt(nn.Module):
    """Prompt levels (``global | expert | personal``, see ``fedprompt.wire.levels``), each its own ``SoftPrompt``
    (so Opacus computes per-sample gradients for all), concatenated in level order; a 0-token level is absent."""

    def __init__(self, inits: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.levels = nn.ModuleDict({name: SoftPrompt(init) for name, init in inits.items() if init.shape[0] > 0})

    @property
    def length(self) -> int:
        return sum(typing.cast(SoftPrompt, p).length for p in self.levels.values())

    def forward(self, batch_size: int) -> torch.Tensor:
        return torch.cat([p(batch_size) for p in self.levels.values()], dim=1)


def _vocab_init(backbone: Backbone, length: int, seed: int) -> torch.Tensor:
    """The embeddings of ``fedprompt.scoring.prompt_init_ids``: the same rows the model service starts from."""
    table = typing.cast(torch.Tensor, backbone.model.get_input_embeddings().weight)
    ids = torch.from_numpy(prompt_init_ids(int(table.shape[0]), length, seed))
    return table[ids.to(table.device)].detach().float()


def cache_keyword(model: nn.Module) -> str:
    """The name a transformers model takes its key/value cache by: ``cache`` in recent transformers 5 releases,
    ``past_key_values`` before (deprecated there, removed in 5.40)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def prompted_features(model: PreTrainedModel, kind: str, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      prompt: torch.Tensor, prefix: tuple[Any, int] | None = None) -> torch.Tensor:
    """What a label head reads from the frozen PLM given a batch's ``(B, P, dim)`` soft prompt (P may be 0).

    ``encoder``: ``[CLS] <prompt> tokens [SEP]`` (``[CLS]`` stays first, as the backbone was trained), then the
    unit-length mean of the last hidden states, prompt positions included, so the prompt acts directly on
    the sentence embedding.  ``causal``: ``<prompt> tokens``, then the next-token logits after the last real
    token (inputs are right-padded).  The LM head runs on that one position only: over every position it is a
    fifth of a small model's compute (SmolLM2-135M: a 49k vocabulary on 576-wide states; 300 Rotten Tomatoes
    reviews take 32 s instead of 43 s, with identical logits).  One function for ``PromptClassifier`` and the
    exported scoring graph (``fedprompt.models.export``), so the model service scores exactly as local
    training does.  The prompt is cast to the backbone's dtype where it enters, and the features come back in
    float32, so a low-precision backbone (``fedprompt.models.placement``) feeds a float32 head and loss.
    ``prefix`` (a key/value cache holding a deep prompt and its length, ``fedprompt.models.adapters``) is
    attended to by every layer: its positions lead the attention mask, but hold no hidden state to pool or read.
    """
    batch = input_ids.shape[0]
    embeds = model.get_input_embeddings()(input_ids)
    prompt = prompt.to(embeds.dtype)
    ones = torch.ones(batch, prompt.shape[1], dtype=attention_mask.dtype, device=attention_mask.device)
    core = model if kind == "encoder" else model.base_model
    past: dict[str, Any] = {}
    lead = attention_mask[:, :0]
    if prefix is not None:
        past = {cache_keyword(core): prefix[0]}
        lead = torch.ones(batch, prefix[1], dtype=attention_mask.dtype, device=attention_mask.device)
    if kind == "encoder":
        embeds = torch.cat([embeds[:, :1], prompt, embeds[:, 1:]], dim=1)
        mask = torch.cat([attention_mask[:, :1], ones, attention_mask[:, 1:]], dim=1)
        hidden = core(inputs_embeds=embeds, attention_mask=torch.cat([lead, mask], dim=1), **past).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return F.normalize((hidden * weights).sum(1).float() / weights.sum(1).float(), dim=-1)
    embeds = torch.cat([prompt, embeds], dim=1)
    mask = torch.cat([ones, attention_mask], dim=1)
    hidden = core(inputs_embeds=embeds, attention_mask=torch.cat([lead, mask], dim=1), **past).last_hidden_state
    return model.get_output_embeddings()(hidden[torch.arange(batch), mask.sum(1) - 1]).float()


class AdaptedModel(nn.Module):
    """A frozen backbone steered by a soft prompt, or by a peft adapter (``peft.method``: ``prefix`` or ``lora``,
    ``fedprompt.models.adapters``) in its place, with the flat vector of trainable tensors the federation
    exchanges; ``PromptClassifier`` and ``fedprompt.models.generator.PromptGenerator`` read different outputs
    from the same machinery, so a generation job exchanges the same adapter state a classification job does."""

    def __init__(self, backbone: Backbone, prompt_length: int, max_length: int, template: str, seed: int,
                 level_tokens: dict[str, int] | None, peft: PeftSection | None) -> None:
        """``level_tokens`` (level name -> tokens, in ``fedprompt.wire.levels.LEVELS`` order, summing to
        ``prompt_length``) builds a levelled prompt; without it the prompt is one global level.  ``peft`` picks
        the method (default: the shallow prompt); a prefix is ``prompt_length`` virtual tokens long."""
        super().__init__()
        if prompt_length < 1:
            raise ConfigError(f"model.prompt_length: must be >= 1, got {prompt_length}")
        self.backbone = backbone.model
        self.tokenizer = backbone.tokenizer
        self.kind = backbone.kind
        self.max_length = max_length
        self.template = template
        self.method = peft.method if peft is not None else "prompt"
        self.prompt: SoftPrompt | LevelledPrompt | None = None
        if self.method != "prompt":
            if level_tokens is not None:
                raise ConfigError(f"levels.enabled: prompt levels need peft.method = 'prompt', not {self.method!r}")
        elif level_tokens is None:
            self.prompt = SoftPrompt(_vocab_init(backbone, prompt_length, seed))
        else:
            if sum(level_tokens.values()) != prompt_length:
                raise ConfigError(f"model.prompt_length: {prompt_length} differs from the levels' {level_tokens}")
            self.prompt = LevelledPrompt({name: _vocab_init(backbone, n, seed + i)
                                          for i, (name, n) in enumerate(level_tokens.items())})
        self.dim = int(typing.cast(torch.Tensor, backbone.model.get_input_embeddings().weight).shape[1])
        self.head: nn.Linear | None = None
        # The peft model is held outside the module tree (a tuple): its LoRA layers already live in the backbone,
        # and a prefix encoder is registered below, so nothing is listed twice.
        self._peft: tuple[PeftModel, ...] = ()
        if peft is not None and self.method != "prompt":
            from fedprompt.models.adapters import attach, peft_config

            self._peft = (attach(backbone, peft_config(peft, self.kind, prompt_length, backbone.model), seed),)
            if self.method == "prefix":
                self.prefix_encoder = self._peft[0].prompt_encoder

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    def steering(self, batch: int) -> tuple[torch.Tensor, tuple[Any, int] | None]:
        """A batch's ``(B, P, dim)`` soft prompt (P = 0 under a peft adapter) and, for a prefix, its key/value
        cache and length: what ``prompted_features`` and the generator feed the frozen PLM."""
        prompt = self.prompt(batch) if self.prompt is not None else torch.zeros(batch, 0, self.dim, device=self.device)
        prefix = None
        if self.method == "prefix":
            from fedprompt.models.adapters import prefix_cache

            prefix = prefix_cache(self._peft[0], batch)
        return prompt, prefix

    def summed_loss(self, forward: Callable[..., torch.Tensor], examples: Sequence[Example], y: torch.Tensor,
                    part: list[int]) -> torch.Tensor:
        """The training loss of ``examples[part]`` summed over examples (so Opacus's per-example gradients are
        each example's own), through ``forward``: this model or Opacus's wrapper of it."""
        raise NotImplementedError

    def level_parameters(self) -> dict[str, list[nn.Parameter]]:
        """The trainable tensors by prompt level, in vector order.  The label head is shared by everyone, so it
        belongs to the global level (right after the global prompt); without levels all is global."""
        head = list(self.head.parameters()) if self.head is not None and self.head.weight.requires_grad else []
        if self._peft:
            from fedprompt.models.adapters import adapter_parameters

            return {GLOBAL: adapter_parameters(self._peft[0]) + head}
        if isinstance(self.prompt, SoftPrompt):
            return {GLOBAL: list(self.prompt.parameters()) + head}
        levels = {name: list(p.parameters()) for name, p in typing.cast(LevelledPrompt, self.prompt).levels.items()}
        levels[GLOBAL] = levels[GLOBAL] + head
        return levels

    def exchanged_parameters(self) -> list[nn.Parameter]:
        """The trainable tensors in a fixed order that cross the network: every level but the personal one (a
        frozen head stays out)."""
        return [p for name, params in self.level_parameters().items() if name != PERSONAL for p in params]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Everything local training updates: the exchanged tensors and the personal level."""
        return [p for params in self.level_parameters().values() for p in params]

    def level_sizes(self) -> dict[str, int]:
        """Size of each exchanged level's slice of ``get_vector()``, in vector order."""
        return {name: sum(p.numel() for p in params) for name, params in self.level_parameters().items()
                if name != PERSONAL}

    def personal_vector(self) -> np.ndarray:
        """The personal level flattened (empty without one): it stays at the site."""
        return _flatten(self.level_parameters().get(PERSONAL, []))

    def set_personal_vector(self, vector: np.ndarray) -> None:
        """Load a personal level saved by ``personal_vector`` (of this model's exact size)."""
        _load(self.level_parameters().get(PERSONAL, []), vector, "personal prompt")

    def get_vector(self) -> np.ndarray:
        """The exchanged parameters flattened to one float32 vector."""
        return _flatten(self.exchanged_parameters())

    def set_vector(self, vector: np.ndarray) -> None:
        """Load a flat vector produced by ``get_vector`` (of this model's exact size)."""
        _load(self.exchanged_parameters(), vector, "prompt vector")

    @property
    def vector_size(self) -> int:
        return sum(p.numel() for p in self.exchanged_parameters())

    @property
    def plm_parameters(self) -> int:
        """The frozen PLM's parameters (LoRA's, injected into its layers, are not)."""
        return sum(p.numel() for p in self.backbone.parameters() if not p.requires_grad)

    @property
    def peft_model(self) -> PeftModel:
        """The peft wrapper of a ``prefix`` or ``lora`` adapter (what peft saves); a shallow prompt has none."""
        if not self._peft:
            raise ConfigError(f"peft.method = {self.method!r} is fedprompt's own prompt, not a peft model")
        return self._peft[0]

    def peft_state_dict(self) -> dict[str, torch.Tensor]:
        """The adapter's trained state as peft saves it (``get_peft_model_state_dict``); empty for a shallow prompt."""
        if not self._peft:
            return {}
        from peft import get_peft_model_state_dict

        return typing.cast(dict[str, torch.Tensor], get_peft_model_state_dict(self._peft[0]))


class PromptClassifier(AdaptedModel):
    """Classifies texts with a frozen backbone steered by a soft prompt or a peft adapter (``AdaptedModel``);
    the scoring is the same for all three methods.

    ``encoder`` backbones score the mean-pooled sentence embedding (``prompted_features``) with a cosine head
    initialised from the embeddings of the label descriptions (``fedprompt.scoring.cosine_head``), so the
    untuned model is a genuine zero-shot classifier.  ``causal`` backbones score the first token of each
    label word at the next-token position (a verbalizer, ``fedprompt.scoring.verbalizer_ids``).
    ``train_head=False`` freezes the encoder head at its label-description anchors, so both gradient and
    black-box jobs tune the prompt alone with the same scoring.
    """

    label_token_ids: torch.Tensor

    def __init__(
        self,
        backbone: Backbone,
        label_words: Sequence[str],
        prompt_length: int,
        max_length: int = 64,
        template: str = "{text}",
        seed: int = 0,
        train_head: bool = True,
        level_tokens: dict[str, int] | None = None,
        peft: PeftSection | None = None,
    ) -> None:
        if len(label_words) < 2:
            raise ConfigError("task.label_words: need at least two labels")
        super().__init__(backbone, prompt_length, max_length, template, seed, level_tokens, peft)
        if self.kind == "encoder":
            self.head = nn.Linear(self.dim, len(label_words))
            with torch.no_grad(), contextlib.ExitStack() as plain:  # anchors come from the PLM alone
                for attached in backbone.adapters.values():  # a prefix is outside the PLM already (and peft
                    if not attached.active_peft_config.is_prompt_learning:  # cannot disable one here)
                        plain.enter_context(attached.disable_adapter())
                enc = self._encode(list(label_words), template="{text}")
                enc = {k: v.to(backbone.device) for k, v in enc.items()}
                anchors = prompted_features(self.backbone, "encoder", enc["input_ids"], enc["attention_mask"],
                                            torch.zeros(len(label_words), 0, self.dim, device=backbone.device))
                self.head.weight.copy_(torch.from_numpy(cosine_head(anchors.cpu().numpy())))
                self.head.bias.zero_()
            self.head.requires_grad_(train_head)
        else:
            first = verbalizer_ids(lambda s: list(self.tokenizer(s, add_special_tokens=False).input_ids),
                                   label_words)
            self.register_buffer("label_token_ids", torch.tensor(first), persistent=False)
        self.to(backbone.device)  # the trainable tensors join the backbone's device, in float32

    @property
    def num_labels(self) -> int:
        return int(self.head.out_features if self.head is not None else self.label_token_ids.numel())

    def _encode(self, texts: Sequence[str], template: str) -> dict[str, torch.Tensor]:
        return self._pad(self._token_ids(texts, template))

    def _token_ids(self, texts: Sequence[str], template: str) -> list[list[int]]:
        filled = [template.format(text=t) for t in texts]
        return self.tokenizer(filled, truncation=True, max_length=self.max_length)["input_ids"]

    def _pad(self, ids: Sequence[list[int]]) -> dict[str, torch.Tensor]:
        """Right-pad token ids into a batch (causal models gather the last real token)."""
        rows = [torch.tensor(row, dtype=torch.long) for row in ids]
        return {"input_ids": pad_sequence(rows, batch_first=True, padding_value=self.tokenizer.pad_token_id),
                "attention_mask": pad_sequence([torch.ones_like(row) for row in rows], batch_first=True)}

    def summed_loss(self, forward: Callable[..., torch.Tensor], examples: Sequence[Example], y: torch.Tensor,
                    part: list[int]) -> torch.Tensor:
        """The summed cross-entropy of ``examples[part]`` against label indices ``y[part]`` through ``forward`` (this
        model, or Opacus's wrapper of it); logits are float32 whatever the backbone's dtype."""
        logits = forward(**self.tokenize([examples[i].text for i in part]))
        return F.cross_entropy(logits, y[part].to(logits.device), reduction="sum")

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise texts with the task template; right padding (causal models gather the last real token)."""
        return self._encode(texts, self.template)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Return float32 label logits of shape ``(B, num_labels)`` (on the backbone's device)."""
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        prompt, prefix = self.steering(input_ids.shape[0])
        features = prompted_features(self.backbone, self.kind, input_ids, attention_mask, prompt, prefix)
        if self.head is not None:
            return self.head(features)
        return features[:, self.label_token_ids]

    @torch.no_grad()
    def predict_proba(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Class probabilities for ``texts`` (eval mode, no gradients), in the caller's order, computed in
        batches of similar token length (``length_batches``)."""
        self.eval()
        tokens = self._token_ids(texts, self.template)
        out = np.zeros((len(texts), self.num_labels), dtype=np.float32)
        for rows in length_batches([len(t) for t in tokens], batch_size):
            enc = self._pad([tokens[i] for i in rows])
            out[rows] = torch.softmax(self(**enc), dim=-1).cpu().numpy()
        return out



def _flatten(params: list[nn.Parameter]) -> np.ndarray:
    if not params:
        return np.zeros(0, dtype=np.float32)
    return torch.cat([p.detach().reshape(-1) for p in params]).cpu().numpy().astype(np.float32)


def _load(params: list[nn.Parameter], vector: np.ndarray, what: str) -> None:
    size = sum(p.numel() for p in params)
    if vector.shape != (size,):
        raise InvalidUpdate(f"{what} has shape {vector.shape}, expected ({size},)")
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(torch.from_numpy(vector[offset : offset + n].copy()).reshape(p.shape))
            offset += n
