"""The portable prompt file (safetensors): a global prompt plus the job config needed to rebuild the model.

``safetensors`` is imported inside the functions: the black-box participant writes prompt files but must not
import any weight-loading library (``tests/integration/test_blackbox.py`` checks its module set).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedprompt.errors import FileError, clip
from fedprompt.files import writable


def save_prompt(path: Path, vector: np.ndarray, config_toml: str, version: int, job_id: str) -> None:
    """A portable prompt file: the vector plus the job config needed to rebuild the model (no pickle)."""
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    try:
        writable(path, "prompt file").parent.mkdir(parents=True, exist_ok=True)
        save_file({"prompt_vector": vector}, str(path),
                  metadata={"job_config_toml": config_toml, "version": str(version), "job_id": job_id})
    except (OSError, SafetensorError) as exc:
        raise FileError(f"cannot write prompt file {path}: {getattr(exc, 'strerror', None) or exc}") from exc


def load_prompt(path: Path) -> tuple[np.ndarray, str]:
    """Read a prompt file written by ``save_prompt``: (vector, job config TOML).  A missing file, a file that is
    not safetensors, or one without a finite 1-D float prompt and its job config is a ``FileError`` naming it."""
    vector, config_toml, _ = read_prompt(path)
    return vector, config_toml


def read_prompt(path: Path) -> tuple[np.ndarray, str, dict[str, str]]:
    """``load_prompt`` with the file's metadata (``version``, ``job_id``)."""
    from safetensors import SafetensorError, safe_open

    if not Path(path).is_file():
        why = "is a directory" if Path(path).is_dir() else "No such file or directory"
        raise FileError(f"cannot read prompt file {path}: {why}")
    try:
        with safe_open(str(path), framework="numpy") as fh:
            metadata = fh.metadata() or {}
            vector = fh.get_tensor("prompt_vector") if "prompt_vector" in fh.keys() else None
    except OSError as exc:
        raise FileError(f"cannot read prompt file {path}: {exc.strerror or exc}") from exc
    except SafetensorError as exc:
        raise FileError(f"prompt file {path} is not a safetensors file ({clip(str(exc), 200)})") from exc
    if "job_config_toml" not in metadata or vector is None:
        raise FileError(f"{path} is not a fedprompt prompt file (no job config or no prompt_vector)")
    if vector.ndim != 1 or vector.dtype != np.float32 or not np.isfinite(vector).all():
        raise FileError(f"{path}: prompt_vector must be a finite 1-D float32 vector, got {vector.dtype} "
                        f"{list(vector.shape)}")
    return vector, metadata["job_config_toml"], metadata
