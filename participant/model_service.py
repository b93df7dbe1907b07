"""The query-only model service's domain: one frozen PLM that scores texts under a caller's soft prompt.

A black-box participant (FedBPT, Sun et al. 2023; BBT, Sun et al. 2022, "Language-Model-as-a-Service")
never holds the PLM: it sends texts and a soft prompt here and gets label logits and a loss back.  No
parameter or gradient leaves: the only model statistic exposed is the embedding table's standard deviation,
which BBT uses to scale its random projection.  Every query is checked at this boundary (batch size, prompt
shape, finiteness, labels, lengths) and refused with a typed error.  This module never imports grpc; the
servicer in ``participant.model_server`` maps the errors to status codes.
"""

from __future__ import annotations

import typing
from collections import OrderedDict

import numpy as np
import structlog
import torch
import torch.nn.functional as F

from fedprompt.config import ModelServiceSection
from fedprompt.errors import ConfigError, InvalidQuery, QueryTooLarge
from fedprompt.models.backbone import Backbone
from fedprompt.models.classifier import PromptClassifier, SoftPrompt
from fedprompt.protocol import ModelInfo, ScoreQuery, ScoreResult

log = structlog.get_logger("participant.model_service")

TaskKey = tuple[tuple[str, ...], str, int, int, int]


class ModelHost:
    """Scores queries with one loaded backbone; one frozen classifier per task, the last ``max_tasks`` kept."""

    def __init__(self, backbone: Backbone, settings: ModelServiceSection) -> None:
        self.backbone = backbone
        self.settings = settings
        table = typing.cast(torch.Tensor, backbone.model.get_input_embeddings().weight)
        self.info = ModelInfo(model=settings.model, kind=backbone.kind, hidden_size=int(table.shape[1]),
                              embedding_std=float(table.detach().float().std()), max_batch=settings.max_batch,
                              max_prompt_tokens=settings.max_prompt_tokens, max_length=settings.max_length)
        self._tasks: OrderedDict[TaskKey, tuple[PromptClassifier, torch.Tensor]] = OrderedDict()

    def describe(self) -> ModelInfo:
        return self.info

    def check(self, q: ScoreQuery) -> None:
        """Refuse a malformed or oversized query, naming what is wrong; nothing is computed before this."""
        s = self.settings
        if not q.texts:
            raise InvalidQuery("no texts to score")
        if len(q.texts) > s.max_batch:
            raise QueryTooLarge(f"{len(q.texts)} texts exceed this service's max_batch of {s.max_batch}")
        if max(len(t) for t in q.texts) > s.max_text_chars:
            raise QueryTooLarge(f"a text exceeds {s.max_text_chars} characters")
        if len(q.label_words) < 2 or not all(w.strip() for w in q.label_words):
            raise InvalidQuery("need at least two non-empty label words")
        if q.labels and (len(q.labels) != len(q.texts) or max(q.labels) >= len(q.label_words)):
            raise InvalidQuery(f"labels must be one index in [0, {len(q.label_words)}) per text")
        try:
            q.template.format(text="")
        except (KeyError, IndexError, ValueError) as exc:
            raise InvalidQuery(f"template must contain only the placeholder {{text}}: {exc!r}") from exc
        if "{text}" not in q.template:
            raise InvalidQuery("template must contain the placeholder {text}")
        if not 8 <= q.max_length <= s.max_length:
            raise QueryTooLarge(f"max_length {q.max_length} is outside [8, {s.max_length}]")
        if not 1 <= q.prompt_tokens <= s.max_prompt_tokens:
            raise QueryTooLarge(f"prompt_tokens {q.prompt_tokens} is outside [1, {s.max_prompt_tokens}]")
        expected = q.prompt_tokens * self.info.hidden_size
        if q.prompt.shape != (expected,):
            raise InvalidQuery(f"prompt has {q.prompt.size} floats, expected prompt_tokens x hidden_size = "
                               f"{q.prompt_tokens} x {self.info.hidden_size} = {expected}")
        if not np.isfinite(q.prompt).all():
            raise InvalidQuery("prompt contains NaN or Inf")

    def _task(self, q: ScoreQuery) -> tuple[PromptClassifier, torch.Tensor]:
        key: TaskKey = (q.label_words, q.template, q.max_length, q.prompt_tokens, q.init_seed)
        if key in self._tasks:
            self._tasks.move_to_end(key)
            return self._tasks[key]
        try:
            model = PromptClassifier(self.backbone, q.label_words, q.prompt_tokens, q.max_length, q.template,
                                     seed=q.init_seed, train_head=False)
        except ConfigError as exc:
            raise InvalidQuery(str(exc)) from exc
        model.requires_grad_(False)
        model.eval()
        assert isinstance(model.prompt, SoftPrompt)  # no prompt levels: one soft prompt, offset as a whole
        base = model.prompt.embedding.weight.detach().clone()
        self._tasks[key] = (model, base)
        while len(self._tasks) > self.settings.max_tasks:
            self._tasks.popitem(last=False)
        log.info("task prepared", labels=len(q.label_words), prompt_tokens=q.prompt_tokens, cached=len(self._tasks))
        return model, base

    def score(self, q: ScoreQuery) -> ScoreResult:
        """Label logits for ``q.texts`` under ``initial(init_seed) + q.prompt`` (forward pass only)."""
        self.check(q)
        model, base = self._task(q)
        offset = torch.from_numpy(q.prompt.astype(np.float32).reshape(q.prompt_tokens, self.info.hidden_size))
        assert isinstance(model.prompt, SoftPrompt)
        with torch.no_grad():
            model.prompt.embedding.weight.copy_(base + offset)
            logits = model(**model.tokenize(list(q.texts))).float()
            loss = float(F.cross_entropy(logits, torch.tensor(q.labels))) if q.labels else 0.0
        return ScoreResult(logits.numpy(), loss)
