"""The query-only model service's domain: one frozen PLM that scores texts under a caller's soft prompt.

A black-box participant (FedBPT, Sun et al. 2023; BBT, Sun et al. 2022, "Language-Model-as-a-Service")
never holds the PLM: it sends texts and a soft prompt here and gets label logits and a loss back.  No
parameter or gradient leaves: the only model statistic exposed is the embedding table's standard deviation,
which BBT uses to scale its random projection.  Every query is checked at this boundary (batch size, prompt
shape, finiteness, labels, lengths) and refused with a typed error.  This module never imports grpc; the
servicer in ``participant.model_server`` maps the errors to status codes.

The service runs forward passes only, so it needs neither torch nor transformers: the backbone's scoring
graph is exported once to ONNX (``fedprompt.models.export``, in a child process, cached) and served by ONNX
Runtime with the ``tokenizers`` library.  The graph is the same ``prompted_features`` the gradient path
trains through, and a test checks both score alike.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import structlog
import tokenizers

from fedprompt.config import ModelServiceSection
from fedprompt.errors import ConfigError, InvalidQuery, QueryTooLarge
from fedprompt.locations import GRAPH_FILE, META_FILE, TOKENIZER_FILE, scorer_dir
from fedprompt.protocol import ModelInfo, ScoreQuery, ScoreResult
from fedprompt.scoring import cosine_head, cross_entropy, length_batches, prompt_init_ids, verbalizer_ids

log = structlog.get_logger("participant.model_service")

TaskKey = tuple[tuple[str, ...], str, int, int, int]


def prepare_scorer(ref: str, kind: str) -> Path:
    """The exported scoring graph of backbone ``ref``, exporting it first (once; cached by a fingerprint of
    the source, see ``fedprompt.locations.scorer_dir``).  The export runs in a child process: it needs torch,
    which this process must not load."""
    target = scorer_dir(ref, kind)
    if (target / META_FILE).exists():
        return target
    log.info("exporting the scoring graph once", model=ref, to=str(target))
    done = subprocess.run([sys.executable, "-m", "fedprompt.models.export", ref, "--kind", kind, "--out", str(target)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"model_service.model: cannot export {ref!r} for serving: {reason}")
    return target


def ort_providers(device: str, available: Sequence[str]) -> list[str | tuple[str, dict[str, str]]]:
    """onnxruntime execution providers for ``model_service.device``: ``auto`` takes CUDA where this onnxruntime
    build has it, ``cuda[:N]`` insists on it (refused by name otherwise), ``cpu`` never uses it.  The graph is
    float32 whatever the device (``fedprompt.models.export`` traces it on the CPU in float32)."""
    cuda = "CUDAExecutionProvider" in available
    if device == "cpu" or (device == "auto" and not cuda):
        return ["CPUExecutionProvider"]
    if not cuda:
        raise ConfigError(f"model_service.device: {device!r} needs onnxruntime's CUDAExecutionProvider, which this "
                          f"onnxruntime does not have (it has {', '.join(available)}); install onnxruntime-gpu or use 'cpu'")
    index = device.partition(":")[2] or "0"
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


@dataclass(frozen=True)
class _Task:
    """What one (labels, template, lengths, seed) task needs beyond the query: its label head and initial prompt."""

    head: np.ndarray  # encoder: (labels, hidden) cosine head; causal: (labels,) verbalizer token ids
    prompt_ids: np.ndarray


class ModelHost:
    """Scores queries with one exported backbone; one frozen label head per task, the last ``max_tasks`` kept."""

    def __init__(self, scorer: Path, settings: ModelServiceSection) -> None:
        self.settings = settings
        meta = json.loads((scorer / META_FILE).read_text())
        self.kind: str = meta["kind"]
        self.vocab_size: int = meta["vocab_size"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.threads
        options.inter_op_num_threads = 1
        options.enable_cpu_mem_arena = False  # a long-lived service should give activation memory back
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(scorer / GRAPH_FILE), options,
                                            providers=ort_providers(settings.device, ort.get_available_providers()))
        self.tokenizer = tokenizers.Tokenizer.from_file(str(scorer / TOKENIZER_FILE))
        self.pad_id = int(meta["pad_token_id"])
        self.info = ModelInfo(model=settings.model, kind=self.kind, hidden_size=int(meta["hidden_size"]),
                              embedding_std=float(meta["embedding_std"]), max_batch=settings.max_batch,
                              max_prompt_tokens=settings.max_prompt_tokens, max_length=settings.max_length)
        self._tasks: OrderedDict[TaskKey, _Task] = OrderedDict()

    @classmethod
    def load(cls, settings: ModelServiceSection) -> ModelHost:
        """The host for ``settings.model``, exported first if it never was."""
        return cls(prepare_scorer(settings.model, settings.kind), settings)

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

    def _tokens(self, texts: Sequence[str], template: str, max_length: int) -> list[list[int]]:
        """Token ids like ``PromptClassifier.tokenize``'s: template filled, truncated, not yet padded."""
        self.tokenizer.enable_truncation(max_length)
        self.tokenizer.no_padding()
        return [e.ids for e in self.tokenizer.encode_batch([template.format(text=t) for t in texts])]

    def _padded(self, tokens: Sequence[list[int]]) -> dict[str, np.ndarray]:
        """Right-padded to the longest, as ``PromptClassifier.tokenize`` pads (causal scoring reads the last
        real position)."""
        width = max(len(t) for t in tokens)
        ids = np.full((len(tokens), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(tokens), width), dtype=np.int64)
        for row, t in enumerate(tokens):
            ids[row, : len(t)] = t
            mask[row, : len(t)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def _features(self, enc: dict[str, np.ndarray], prompt_ids: np.ndarray, offset: np.ndarray) -> np.ndarray:
        feeds = {**enc, "prompt_ids": prompt_ids, "prompt_offset": offset}
        return np.asarray(self.session.run(None, feeds)[0], dtype=np.float32)

    def _task(self, q: ScoreQuery) -> _Task:
        key: TaskKey = (q.label_words, q.template, q.max_length, q.prompt_tokens, q.init_seed)
        if key in self._tasks:
            self._tasks.move_to_end(key)
            return self._tasks[key]
        if self.kind == "encoder":
            words = self._padded(self._tokens(q.label_words, "{text}", q.max_length))
            empty = np.zeros((0, self.info.hidden_size), dtype=np.float32)
            head = cosine_head(self._features(words, np.zeros(0, dtype=np.int64), empty))
        else:
            def encode(text: str) -> list[int]:
                return list(self.tokenizer.encode(text, add_special_tokens=False).ids)
            try:
                head = np.array(verbalizer_ids(encode, q.label_words), dtype=np.int64)
            except ConfigError as exc:
                raise InvalidQuery(str(exc)) from exc
        task = _Task(head, prompt_init_ids(self.vocab_size, q.prompt_tokens, q.init_seed))
        self._tasks[key] = task
        while len(self._tasks) > self.settings.max_tasks:
            self._tasks.popitem(last=False)
        log.info("task prepared", labels=len(q.label_words), prompt_tokens=q.prompt_tokens, cached=len(self._tasks))
        return task

    def score(self, q: ScoreQuery) -> ScoreResult:
        """Label logits for ``q.texts`` under ``initial(init_seed) + q.prompt`` (forward pass only)."""
        self.check(q)
        task = self._task(q)
        offset = q.prompt.astype(np.float32).reshape(q.prompt_tokens, self.info.hidden_size)
        tokens = self._tokens(q.texts, q.template, q.max_length)
        logits = np.zeros((len(tokens), len(q.label_words)), dtype=np.float32)
        for rows in length_batches([len(t) for t in tokens], self.settings.forward_batch):
            features = self._features(self._padded([tokens[i] for i in rows]), task.prompt_ids, offset)
            logits[rows] = features @ task.head.T if self.kind == "encoder" else features[:, task.head]
        return ScoreResult(logits, cross_entropy(logits, q.labels) if q.labels else 0.0)
