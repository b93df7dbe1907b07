"""The PeftModel round trip of an exported adapter: the README's "Loading an exported adapter" block, run as a
user pastes it, scores a few texts, and the largest |difference| to fedprompt's own label logits says whether
the export is faithful.  One implementation for tests/component/test_peft_export.py and ``bench peft``."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedprompt.config import JobConfig
from fedprompt.models import build_classifier

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_loader(base: Path, adapter: Path) -> dict[str, Any]:
    """The README's "Loading an exported adapter" block, run as pasted with its two paths filled in; returns
    its namespace (``load_exported``, ``label_logits``, and what the block's last lines computed).  What the
    block prints (its example's label and score) is kept out of a caller's output."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Loading an exported adapter"):]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    if block.count("path/to/base-model") != 1 or block.count("path/to/adapter") != 1:
        raise ValueError("README's loader block must name path/to/base-model and path/to/adapter once each")
    namespace: dict[str, Any] = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(block.replace("path/to/base-model", str(base)).replace("path/to/adapter", str(adapter)), namespace)
    return namespace


def max_diff_to_fedprompt(vector: np.ndarray, config: JobConfig, base: Path, adapter: Path,
                          texts: list[str]) -> float:
    """Largest |difference| between fedprompt's label logits (``predict``'s model with ``vector`` loaded) and
    those of the README's plain transformers + peft loader on the exported ``adapter``, over ``texts``."""
    model = build_classifier(config)
    model.set_vector(vector)
    with torch.no_grad():
        ours = model(**model.tokenize(texts)).numpy()
    loader = readme_loader(base, adapter)
    loaded = loader["load_exported"](str(base), str(adapter))
    theirs = np.stack([loader["label_logits"](*loaded, text).numpy() for text in texts])
    if theirs.shape != ours.shape:
        raise ValueError(f"logit shapes differ: fedprompt {ours.shape}, PeftModel {theirs.shape}")
    return float(np.abs(ours - theirs).max())
