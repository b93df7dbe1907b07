"""Shared fixtures: tiny models are built once per session from a config (no download).

Nothing here imports torch at collection: tests of pure maths, crypto and the coordinator run without the ML
stack (``tests/unit/test_torch_free.py``); the model fixtures import ``fedprompt.app.bench.smoke`` (whose tiny
models every bench's smoke mode uses too) when first asked for.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from fedprompt.logs import configure

if TYPE_CHECKING:
    from fedprompt.app.bench.pgserver import PostgresServer
    from fedprompt.crypto.ckks import PublicContext, SecretContext

configure("warning")


def _one_torch_thread() -> None:
    """``torch.set_num_threads(1)`` if torch is loaded (the machine's cores are shared); never imports it."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread_per_session() -> None:
    """Collection imported the test modules first: a session that loaded torch then runs it on one thread."""
    _one_torch_thread()


@pytest.fixture(autouse=True)
def one_torch_thread() -> None:
    """Torch imported by a test itself (a lazy import inside fedprompt) gets one thread before the next test."""
    _one_torch_thread()


@pytest.fixture(autouse=True)
def cli_logs() -> Iterator[None]:
    """``main`` run in this process points the logs at the stderr it finds (``capsys``'s, closed after the test):
    back to the real one after every test (autouse, so set up before ``capsys`` and torn down after it), so a
    test that runs ``main`` cannot leave the next one logging to a closed file, in whatever order they run."""
    yield
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
    from fedprompt.app.bench.smoke import make_tiny_model

    _one_torch_thread()
    return make_tiny_model(tmp_path_factory.mktemp("tiny-encoder"), "encoder")


@pytest.fixture(scope="session")
def tiny_causal_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fedprompt.app.bench.smoke import make_tiny_model

    _one_torch_thread()
    return make_tiny_model(tmp_path_factory.mktemp("tiny-causal"), "causal")


@pytest.fixture(scope="session")
def ray_cluster(model_cache: Path) -> Iterator[None]:
    """One local Ray of 2 CPUs for every test of the Ray engine (``simulate`` uses a Ray this process started and
    leaves it running); its workers inherit this session's environment, the model cache included."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def secret() -> SecretContext:
    """A key holder's CKKS context under the default parameters (key generation takes a second: made once)."""
    from fedprompt.crypto.ckks import CkksParams, SecretContext

    return SecretContext.create(CkksParams())


@pytest.fixture(scope="session")
def public(secret: SecretContext) -> PublicContext:
    """The public half of ``secret``, as the coordinator and the other members hold it."""
    from fedprompt.crypto.ckks import PublicContext

    return PublicContext(secret.public_bytes(), secret.params, secret.key_id)


_POSTGRES_SKIPPED: list[str] = []  # why the PostgreSQL server could not be started, printed after the run


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server started from Debian's package for this session (``app/bench/pgserver.py``); the tests
    that need it are skipped, with the reason printed, where its binaries or psycopg are missing."""
    from fedprompt.app.bench import pgserver

    server = pgserver.start()
    if isinstance(server, str):
        _POSTGRES_SKIPPED.append(server)
        pytest.skip(f"PostgreSQL: {server}")
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database of the session's server, dropped after the test."""
    url = postgres_server.database()
    yield url
    postgres_server.drop(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test's coordinator store lives, once per backend: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "state.sqlite")
    return str(request.getfixturevalue("postgres_url"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _POSTGRES_SKIPPED:
        terminalreporter.write_line(f"PostgreSQL store tests skipped: {_POSTGRES_SKIPPED[0]}", yellow=True)
