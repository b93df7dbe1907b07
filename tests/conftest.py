"""Shared fixtures: tiny models are built once per session from a config (no download)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fedprompt.logs import configure
from tests.support import make_tiny_model

torch.set_num_threads(1)
configure("warning")


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A session-private cache (exported scoring graphs of the tiny models), also for child processes."""
    path = tmp_path_factory.mktemp("cache")
    before = os.environ.get("FEDPROMPT_CACHE")
    os.environ["FEDPROMPT_CACHE"] = str(path)
    yield path
    if before is None:
        del os.environ["FEDPROMPT_CACHE"]
    else:
        os.environ["FEDPROMPT_CACHE"] = before


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-encoder"), "encoder")


@pytest.fixture(scope="session")
def tiny_causal_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-causal"), "causal")
