"""Black-box participant (FedBPT, Sun et al. 2023): CMA-ES over a low-dimensional z, no PLM in this process.

The soft prompt is ``p = A z + p0`` (Black-Box Tuning, Sun et al. 2022): ``p0`` is the job's initial prompt,
held by the model service (``init_seed`` = job seed), and ``A`` is a fixed random projection from R^d to
R^(prompt_tokens x hidden).  Following BBT, which FedBPT adopts, A's entries are drawn from
N(0, s^2) with ``s = embedding_std / (sqrt(d) * sigma_0)``: a z drawn from CMA-ES's initial distribution
N(0, sigma_0^2 I) then gives prompt offsets with the spread of the model's word embeddings.  A is generated
from the job seed alone, so every participant (and the coordinator, if it wanted) builds the identical
matrix without shipping it; only the embedding statistic comes from the model service.

Each round starts a fresh ``cma.CMAEvolutionStrategy`` (Hansen's library; never hand-written here) at the
global mean and step size, runs ``local_iterations`` ask/tell iterations scoring every candidate on the same
minibatch through the model service, and returns ``[mean..., sigma]``: d + 1 floats are all that leave.

This module must stay importable without torch or transformers; a test checks ``sys.modules``.
"""

from __future__ import annotations

import math
import sys
import warnings
import zlib
from types import ModuleType
from typing import Protocol

import numpy as np
import structlog

from fedprompt.config import JobConfig
from fedprompt.data.datasets import Example
from fedprompt.errors import ConfigError, InvalidUpdate
from fedprompt.participant.learner import ProgressFn, TrainResult, label_metrics, softmax
from fedprompt.protocol import ModelInfo, ScoreQuery, ScoreResult
from fedprompt.wire.payload import pack_search_state, search_state

log = structlog.get_logger("participant.blackbox")

#: Optional imports of ``cma`` this participant never uses: matplotlib (``cma.plot``) and scipy.stats (a
#: surrogate model's rank test, with a pure-Python fallback).  Installed for other parts of fedprompt, they
#: would be ~100 MB of a black-box participant's ~170 MB (measured), so they are hidden while ``cma`` loads.
CMA_OPTIONAL = ("matplotlib", "scipy")


def _import_cma() -> ModuleType:
    """``import cma`` with its optional plotting and statistics dependencies hidden (see ``CMA_OPTIONAL``);
    ``cma`` falls back by itself when they are missing, and they stay importable afterwards."""
    if "cma" in sys.modules or any(name in sys.modules for name in CMA_OPTIONAL):
        import cma
        return cma
    blocked = dict.fromkeys(CMA_OPTIONAL)
    sys.modules.update(blocked)  # type: ignore[arg-type]  # None makes `import name` raise ImportError
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import cma
    finally:
        for name in CMA_OPTIONAL:
            del sys.modules[name]
    return cma


cma = _import_cma()

PROJECTION_TAG = "fedbpt-projection"


class ModelEndpoint(Protocol):
    """A query-only model: the gRPC client in deployments, the ``ModelHost`` itself in simulations."""

    def describe(self) -> ModelInfo: ...

    def score(self, query: ScoreQuery) -> ScoreResult: ...


def projection_seed(job_seed: int) -> int:
    """The projection's RNG seed: a function of the job seed only (stable across processes and platforms)."""
    return zlib.crc32(f"{PROJECTION_TAG}:{job_seed}".encode())


def projection(job_seed: int, intrinsic_dim: int, prompt_dim: int, embedding_std: float, sigma: float) -> np.ndarray:
    """BBT's random projection A (``prompt_dim x intrinsic_dim``, float32), scaled to the embedding statistics."""
    if not (math.isfinite(embedding_std) and embedding_std > 0):
        raise ConfigError(f"model service reports embedding_std {embedding_std!r}; need a positive finite value")
    rng = np.random.Generator(np.random.PCG64(projection_seed(job_seed)))
    a = rng.standard_normal((prompt_dim, intrinsic_dim), dtype=np.float32)
    a *= np.float32(embedding_std / (math.sqrt(intrinsic_dim) * sigma))
    return a


class BlackboxLearner:
    """The ``Learner`` of black-box jobs: local CMA-ES in z-space, every forward pass done by ``endpoint``."""

    def __init__(self, config: JobConfig, endpoint: ModelEndpoint) -> None:
        self.config = config
        self.endpoint = endpoint
        info = endpoint.describe()
        model, bb = config.model, config.blackbox
        if info.model != model.path:
            raise ConfigError(f"participant.model_service: the service hosts {info.model!r}, "
                              f"the job uses {model.path!r}")
        if model.prompt_length > info.max_prompt_tokens or model.max_length > info.max_length:
            raise ConfigError(f"participant.model_service: limits (prompt tokens {info.max_prompt_tokens}, "
                              f"max_length {info.max_length}) are below the job's ({model.prompt_length}, "
                              f"{model.max_length})")
        if bb.batch_size > info.max_batch:
            raise ConfigError(f"blackbox.batch_size {bb.batch_size} exceeds the model service's max_batch "
                              f"{info.max_batch}")
        self.info = info
        self.prompt_tokens = model.prompt_length
        self.projection = projection(config.job.seed, bb.intrinsic_dim, model.prompt_length * info.hidden_size,
                                     info.embedding_std, bb.sigma)
        self.queries = 0

    @property
    def vector_size(self) -> int:
        return self.config.blackbox.intrinsic_dim + 1

    def initial_vector(self) -> np.ndarray:
        """z = 0 (the prompt is exactly p0) with CMA-ES's initial step size."""
        return pack_search_state(np.zeros(self.config.blackbox.intrinsic_dim), self.config.blackbox.sigma)

    def _state(self, vector: np.ndarray) -> tuple[np.ndarray, float]:
        if vector.shape != (self.vector_size,):
            raise InvalidUpdate(f"search state has shape {vector.shape}, expected ({self.vector_size},)")
        z, sigma = search_state(vector)
        if not sigma > 0:
            raise InvalidUpdate(f"search state has step size {sigma}; it must be > 0")
        return z.astype(np.float64), sigma

    def _score(self, z: np.ndarray, texts: list[str], labels: list[int] | None = None) -> ScoreResult:
        task = self.config.task
        offset = self.projection @ z.astype(np.float32)
        query = ScoreQuery(texts=tuple(texts), label_words=task.label_words, template=task.template,
                           max_length=self.config.model.max_length, prompt_tokens=self.prompt_tokens,
                           prompt=offset, init_seed=self.config.job.seed, labels=tuple(labels or ()))
        result = self.endpoint.score(query)
        self.queries += len(texts)
        return result

    def train(self, start: np.ndarray, examples: list[Example], labels: list[int], seed: int,
              progress: ProgressFn | None = None) -> tuple[np.ndarray, TrainResult]:
        """``local_iterations`` CMA-ES iterations from the global (mean, sigma); every candidate of one
        iteration is scored on the same random minibatch so their ranking is fair."""
        bb = self.config.blackbox
        z0, sigma0 = self._state(start)
        if not examples:
            return start, TrainResult(0, 0, float("nan"))
        es = cma.CMAEvolutionStrategy(z0, sigma0, {"popsize": bb.population, "seed": seed % (2**31 - 1) + 1,
                                                   "verbose": -9, "verb_log": 0, "verb_disp": 0})
        rng = np.random.default_rng(seed)
        size = min(bb.batch_size, len(examples))
        best: list[float] = []
        for iteration in range(1, bb.local_iterations + 1):
            idx = rng.choice(len(examples), size=size, replace=False)
            texts = [examples[i].text for i in idx]
            ys = [labels[i] for i in idx]
            candidates = es.ask()
            losses = [self._score(np.asarray(x), texts, ys).loss for x in candidates]
            es.tell(candidates, losses)
            best.append(min(losses))
            if progress is not None:
                progress(iteration, bb.local_iterations, best[-1])
        used = min(len(examples), bb.local_iterations * size)
        return pack_search_state(es.mean, es.sigma), TrainResult(bb.local_iterations, used, float(np.mean(best)))

    def logits(self, vector: np.ndarray, texts: list[str]) -> np.ndarray:
        """Label logits of ``texts`` under the prompt of search mean ``vector[:-1]``, in service-sized batches."""
        z, _ = self._state(vector)
        step = self.info.max_batch
        return np.concatenate([self._score(z, texts[i : i + step]).logits for i in range(0, len(texts), step)])

    def evaluate(self, vector: np.ndarray, examples: list[Example], labels: list[int]) -> dict[str, float]:
        if not examples:
            return {}
        return label_metrics(self.logits(vector, [e.text for e in examples]), labels)

    def predict_proba(self, vector: np.ndarray, texts: list[str]) -> np.ndarray:
        return softmax(self.logits(vector, texts))

    def usage(self) -> dict[str, float]:
        """Texts scored by the model service so far (one query = one text under one prompt)."""
        return {"model_queries": float(self.queries)}
