"""Shared fixtures: tiny models are built once per session from a config (no download)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedprompt.logs import configure
from tests.support import make_tiny_model

torch.set_num_threads(1)
configure("warning")


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-encoder"), "encoder")


@pytest.fixture(scope="session")
def tiny_causal_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-causal"), "causal")
