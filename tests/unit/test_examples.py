"""Every example config in `examples/` loads and validates, so the files the README points to stay usable."""

from __future__ import annotations

import pytest

from fedprompt.app.simulate import load_simulation
from fedprompt.config import CoordinatorConfig, JobConfig, ParticipantConfig, load_toml
from tests.support import REPO

EXAMPLES = REPO / "examples"


@pytest.mark.parametrize("name", ["job.toml", "blackbox.toml", "levels.toml"])
def test_example_jobs_load(name: str) -> None:
    config = load_toml(EXAMPLES / name, JobConfig)
    assert config.job.name


def test_example_daemon_configs_and_simulation_load() -> None:
    assert load_toml(EXAMPLES / "coordinator.toml", CoordinatorConfig).coordinator.listen
    assert load_toml(EXAMPLES / "participant.toml", ParticipantConfig).participant.coordinator
    assert load_simulation(EXAMPLES / "backdoor.toml").job.job.aggregator


def test_each_example_shows_what_its_name_says() -> None:
    assert load_toml(EXAMPLES / "blackbox.toml", JobConfig).mode == "blackbox"
    levels = load_toml(EXAMPLES / "levels.toml", JobConfig)
    assert levels.levels.enabled and levels.he.enabled and len(levels.levels.cohorts) == 2
    assert load_toml(EXAMPLES / "job.toml", JobConfig).augment.gate
