"""The portable prompt file (safetensors): a global prompt plus the job config needed to rebuild the model.

``safetensors`` is imported inside the functions: the black-box participant writes prompt files but must not
import any weight-loading library (``tests/integration/test_blackbox.py`` checks its module set).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedprompt.errors import InvalidUpdate


def save_prompt(path: Path, vector: np.ndarray, config_toml: str, version: int, job_id: str) -> None:
    """A portable prompt file: the vector plus the job config needed to rebuild the model (no pickle)."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"prompt_vector": vector}, str(path),
              metadata={"job_config_toml": config_toml, "version": str(version), "job_id": job_id})


def load_prompt(path: Path) -> tuple[np.ndarray, str]:
    """Read a prompt file written by ``save_prompt``: (vector, job config TOML)."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    with safe_open(str(path), framework="numpy") as fh:
        metadata = fh.metadata() or {}
    if "job_config_toml" not in metadata:
        raise InvalidUpdate(f"{path} is not a fedprompt prompt file (no job config)")
    return load_file(str(path))["prompt_vector"], metadata["job_config_toml"]
