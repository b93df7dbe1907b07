"""Generation tasks: a frozen causal LM steered by the same adapters as the classifier writes a completion.

Training is the causal-LM loss on the completion's tokens only (the prompt's positions carry the label -100, as
in Hugging Face's instruction-tuning recipes): each example contributes the mean negative log-likelihood of its
completion tokens, so a long completion does not weigh more than a short one and DP-SGD clips one example's
gradient, not one token's.  The soft prompt or peft adapter and the flat exchanged vector are
``fedprompt.models.classifier.AdaptedModel``'s, so aggregation, HE and DP treat both tasks alike.

Evaluation: per-token loss (the completion tokens' summed NLL over their count), and greedy decoding of at most
``task.max_new_tokens`` tokens scored by exact match (after case and whitespace folding) and ROUGE-L F1 (Lin,
"ROUGE", ACL 2004 workshop) with Google's ``rouge-score`` (the ``generation`` extra), stemming as its authors'
summarisation results do.  As lm-evaluation-harness's ``target_delimiter``, the completion follows the prompt
after one space unless the prompt ends in whitespace.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from fedprompt.config import PeftSection
from fedprompt.data.formats import Example, chat_messages
from fedprompt.errors import ConfigError, clip
from fedprompt.models.backbone import Backbone
from fedprompt.models.classifier import AdaptedModel, cache_keyword
from fedprompt.scoring import length_batches

#: Labels of positions the loss ignores (the prompt, padding): PyTorch's and Hugging Face's convention.
IGNORE = -100


def _fold(text: str) -> str:
    return " ".join(text.casefold().split())


def text_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean exact match (case and whitespace folded) and mean ROUGE-L F1 of predictions against references."""
    try:
        from rouge_score import rouge_scorer
    except ImportError as exc:
        raise ConfigError("task.kind: 'generation' scores with the rouge-score package; install "
                          "fedprompt[generation]") from exc
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references, strict=True)]
    exact = [_fold(p) == _fold(r) for p, r in zip(predictions, references, strict=True)]
    return {"exact_match": float(np.mean(exact)), "rouge_l": float(np.mean(rouge))}


class PromptGenerator(AdaptedModel):
    """Writes a completion of a prompt with a frozen causal LM and a soft prompt, prefix or LoRA adapter."""

    def __init__(self, backbone: Backbone, prompt_length: int, max_length: int = 256, template: str = "{text}",
                 seed: int = 0, peft: PeftSection | None = None, max_new_tokens: int = 32, chat: bool = False) -> None:
        """``chat``: prompts are chat messages (``fedprompt.data.formats.chat_messages``), rendered by the
        tokenizer's chat template with the assistant's turn opened, in place of ``template``."""
        if backbone.kind != "causal":
            raise ConfigError(f"task.kind: 'generation' needs a causal (decoder) backbone, not {backbone.kind!r}")
        if chat and not getattr(backbone.tokenizer, "chat_template", None):
            raise ConfigError("task.chat: the tokenizer of model.path has no chat template to render messages with")
        super().__init__(backbone, prompt_length, max_length, template, seed, None, peft)
        self.max_new_tokens = max_new_tokens
        self.chat = chat
        self.eos: list[int] = [] if self.tokenizer.eos_token_id is None else [int(self.tokenizer.eos_token_id)]
        self._keeps_logits = "logits_to_keep" in inspect.signature(self.backbone.forward).parameters
        self.to(backbone.device)  # the trainable tensors join the backbone's device, in float32

    def prompt_ids(self, prompt: str) -> list[int]:
        """The filled template's tokens (or the rendered chat), the prompt's text (the last message's) cut so that
        the whole fits ``max_length``: the template's own words, e.g. a trailing question, always survive."""
        messages = chat_messages(prompt)
        if self.chat != (messages is not None):
            raise ConfigError("task.chat: must be true exactly when the data's prompts are chat messages "
                              f"(this job's is {str(self.chat).lower()}, a prompt reads {clip(prompt, 40)!r})")
        text = prompt if messages is None else messages[-1]["content"]
        frame = len(self._fill(messages, ""))
        cut = self.tokenizer(text, add_special_tokens=False)["input_ids"][: max(1, self.max_length - frame)]
        return self._fill(messages, str(self.tokenizer.decode(cut)))

    def _fill(self, messages: list[dict[str, str]] | None, text: str) -> list[int]:
        if messages is None:
            return list(self.tokenizer(self.template.format(text=text))["input_ids"])
        rendered = self.tokenizer.apply_chat_template([*messages[:-1], {**messages[-1], "content": text}],
                                                      tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(str(rendered), add_special_tokens=False)["input_ids"])

    def completion_ids(self, prompt_ids: list[int], completion: str) -> list[int]:
        """The completion's tokens (at most ``max_new_tokens``) and end-of-sequence, after the delimiter."""
        last = self.tokenizer.decode(prompt_ids[-1:])
        text = completion if not last or last[-1].isspace() else " " + completion
        return self.tokenizer(text, add_special_tokens=False)["input_ids"][: self.max_new_tokens] + self.eos

    def encode(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """Right-padded prompt + completion ids, their attention mask, and labels: the completion's ids, -100 on
        the prompt and padding."""
        ids, labels = [], []
        for ex in examples:
            prompt = self.prompt_ids(ex.text)
            completion = self.completion_ids(prompt, ex.label)
            ids.append(torch.tensor(prompt + completion))
            labels.append(torch.tensor([IGNORE] * len(prompt) + completion))
        return {"input_ids": pad_sequence(ids, batch_first=True, padding_value=int(self.tokenizer.pad_token_id)),
                "attention_mask": pad_sequence([torch.ones_like(r) for r in ids], batch_first=True),
                "labels": pad_sequence(labels, batch_first=True, padding_value=IGNORE)}

    def _run(self, embeds: torch.Tensor, attention_mask: torch.Tensor, past: Any = None, last_only: bool = False) -> Any:
        """The frozen LM on ``embeds`` after the soft prompt (or prefix cache) of a fresh sequence, or after
        ``past``, a cache this method returned, with ``attention_mask`` then covering the whole cached history.

        Positions count attended tokens only (``attention_mask``'s running sum, as Hugging Face's ``generate``
        does for left padding): a left-padded row reads the same positions as alone, a shallow prompt's virtual
        tokens and a prefix hold the first ones, and right padding (training) leaves the real tokens' positions
        as they are.  ``last_only`` computes the LM head at the last position alone (decoding needs no more)."""
        batch = embeds.shape[0]
        lead = attention_mask[:, :0]
        if past is None:
            prompt, prefix = self.steering(batch)
            embeds = torch.cat([prompt.to(embeds.dtype), embeds], dim=1)
            ones = torch.ones(batch, prompt.shape[1], dtype=attention_mask.dtype, device=attention_mask.device)
            attention_mask = torch.cat([ones, attention_mask], dim=1)
            if prefix is not None:
                past = prefix[0]
                lead = torch.ones(batch, prefix[1], dtype=attention_mask.dtype, device=attention_mask.device)
        mask = torch.cat([lead, attention_mask], dim=1)
        positions = (mask.cumsum(1) - 1).clamp(min=0)[:, mask.shape[1] - embeds.shape[1]:]
        extra = {} if past is None else {cache_keyword(self.backbone): past}
        if last_only and self._keeps_logits:
            extra["logits_to_keep"] = 1
        return self.backbone(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                             **extra)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Float32 next-token logits ``(B, T, vocab)`` at the input's own positions (the soft prompt's dropped)."""
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        logits = self._run(self.backbone.get_input_embeddings()(input_ids), attention_mask).logits
        return logits[:, logits.shape[1] - input_ids.shape[1]:].float()

    def token_nll(self, forward: Callable[..., torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-token negative log-likelihoods ``(B, T-1)`` of the labels through ``forward`` (0 where ignored)."""
        logits = forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        labels = batch["labels"][:, 1:].to(logits.device)
        return F.cross_entropy(logits[:, :-1].transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")

    def summed_loss(self, forward: Callable[..., torch.Tensor], examples: Sequence[Example], y: torch.Tensor,
                    part: list[int]) -> torch.Tensor:
        """The sum over ``examples[part]`` of each one's mean completion-token NLL (``y``, label indices, is
        unused: the completion is the target)."""
        batch = self.encode([examples[i] for i in part])
        nll = self.token_nll(forward, batch)
        counts = (batch["labels"][:, 1:] != IGNORE).sum(1).clamp(min=1).to(nll.device)
        return (nll.sum(1) / counts).sum()

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], batch_size: int = 16) -> list[str]:
        """Greedy completions of ``prompts``, in their order, decoded ``batch_size`` at a time (prompts of similar
        token length together, ``fedprompt.scoring.length_batches``), each stopping at end-of-sequence or after
        ``max_new_tokens``: the same completions as decoding each prompt alone."""
        self.eval()
        ids = [self.prompt_ids(prompt) for prompt in prompts]
        out = [""] * len(prompts)
        for rows in length_batches([len(row) for row in ids], batch_size):
            for i, written in zip(rows, self._decode([ids[i] for i in rows]), strict=True):
                out[i] = str(self.tokenizer.decode(written, skip_special_tokens=True)).strip()
        return out

    def _decode(self, rows: list[list[int]]) -> list[list[int]]:
        """Greedy token ids written after each of ``rows`` (prompt token ids), decoded as one left-padded batch
        with a key/value cache: every row's last prompt token is the batch's last position, padding is masked
        and skipped by the positions (``_run``), and a row that wrote end-of-sequence is done (what it is fed
        afterwards is discarded; rows never attend to each other)."""
        width = max(len(row) for row in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (self.eos or [0])[0]
        ids = torch.tensor([[pad] * (width - len(row)) + row for row in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], device=self.device)
        embed = self.backbone.get_input_embeddings()
        result = self._run(embed(ids), mask, last_only=True)
        # The cache's history: the steering (prompt or prefix positions, all attended) and then the padded rows.
        cached = result.past_key_values.get_seq_length()
        history = torch.cat([torch.ones(len(rows), cached - width, dtype=mask.dtype, device=self.device), mask], 1)
        written: list[list[int]] = [[] for _ in rows]
        done = [False] * len(rows)
        for step in range(self.max_new_tokens):
            tokens = result.logits[:, -1].argmax(-1)
            for row, token in enumerate(tokens.tolist()):
                done[row] = done[row] or token in self.eos
                if not done[row]:
                    written[row].append(token)
            if all(done) or step == self.max_new_tokens - 1:
                break
            history = torch.cat([history, torch.ones_like(history[:, :1])], 1)
            result = self._run(embed(tokens[:, None]), history, result.past_key_values, last_only=True)
        return written

    @torch.no_grad()
    def evaluate(self, examples: Sequence[Example], batch_size: int = 16) -> dict[str, float]:
        """Per-token loss, exact match and ROUGE-L of greedy completions on ``examples``, ``batch_size`` examples
        per forward pass and per decoded batch."""
        self.eval()
        total, tokens = 0.0, 0
        for start in range(0, len(examples), batch_size):
            batch = self.encode(examples[start : start + batch_size])
            total += float(self.token_nll(self, batch).sum())
            tokens += int((batch["labels"][:, 1:] != IGNORE).sum())
        metrics = text_metrics(self.generate([e.text for e in examples], batch_size), [e.label for e in examples])
        return {**metrics, "loss": total / max(1, tokens)}
