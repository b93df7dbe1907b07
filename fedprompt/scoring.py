"""How label scores come out of a frozen PLM, in the parts both scorers share: the gradient path's
``PromptClassifier`` (torch) and the model service's exported graph (ONNX Runtime, no torch).

Both must agree to the float on what a soft prompt scores, so the choices live here once: which vocabulary
rows initialise the prompt, which token stands for a label word, the cosine head's temperature, and how
texts are batched for inference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fedprompt.errors import ConfigError

#: Cosine similarities lie in [-1, 1]; a fixed temperature turns them into usable logits.
LOGIT_SCALE = 20.0


def prompt_init_ids(vocab_size: int, length: int, seed: int) -> np.ndarray:
    """Vocabulary rows whose embeddings initialise a soft prompt: random in-vocabulary tokens, which Lester et
    al. (2021) found beat random vectors.  The first rows (special and rare tokens in most vocabularies) are
    skipped.  Seeded by the job, so the model service rebuilds a participant's initial prompt exactly."""
    low = min(1000, vocab_size // 2)
    return np.random.default_rng(seed).integers(low, vocab_size, length).astype(np.int64)


def verbalizer_ids(encode: Callable[[str], list[int]], label_words: Sequence[str]) -> list[int]:
    """The first token of each label word (with a leading space, as it follows other words), for causal LMs;
    ``encode`` tokenises without special tokens.  Two labels sharing a first token could never be told apart."""
    first = [encode(" " + w.strip())[0] for w in label_words]
    if len(set(first)) != len(first):
        raise ConfigError(f"task.label_words: {list(label_words)} share a first token; pick distinct words")
    return first


def cosine_head(anchors: np.ndarray) -> np.ndarray:
    """The frozen encoder head: each label's row is its description's unit-length embedding times the
    temperature, so untuned logits are scaled cosine similarities (a zero-shot classifier)."""
    norms = np.maximum(np.linalg.norm(anchors, axis=-1, keepdims=True), 1e-12)
    return (anchors / norms * LOGIT_SCALE).astype(np.float32)


def length_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Row indices in batches of ``batch_size``, shortest texts (in tokens) first; callers put each batch's
    results back at its indices.  A batch pads to its longest text, so mixing short and long texts spends
    much of a forward pass on padding (300 Rotten Tomatoes reviews on SmolLM2-135M: 58 s in arrival order,
    43 s sorted by length)."""
    order = np.argsort(np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def cross_entropy(logits: np.ndarray, labels: Sequence[int]) -> float:
    """Mean cross-entropy of integer labels under ``logits`` (numerically stable log-softmax)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), list(labels)].mean())
