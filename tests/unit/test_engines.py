"""Choosing a simulation's engine: the ``[simulation]`` engine keys validated at load, the CLI's flags, the one
line a missing Ray gives, and the site group every engine runs (one loaded PLM for all its sites)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from fedprompt.app.attacks import AttackSection
from fedprompt.app.cli import main
from fedprompt.app.engines import EngineSection, RaySection
from fedprompt.app.engines.coordinator import SimCoordinator
from fedprompt.app.engines.ray_engine import RAY_MISSING
from fedprompt.app.engines.sites import SiteGroup, SitePlan, site_name
from fedprompt.app.simulate import parse_simulation
from fedprompt.config import dump_toml
from fedprompt.data.shards import DataPlan
from fedprompt.errors import ConfigError
from tests.support import REPO, tiny_job, toy_sites, write_toy_dataset


def test_the_engine_keys_are_read_beside_the_data_plan() -> None:
    sim = parse_simulation('[simulation]\nengine = "ray"\nparticipants = 7\n'
                           '[simulation.ray]\naddress = "auto"\nworkers = 4\ncpus_per_worker = 2.0\nmemory_mb = 512\n')
    assert sim.engine == EngineSection("ray", RaySection(address="auto", workers=4, cpus_per_worker=2.0,
                                                         memory_mb=512))
    assert sim.simulation == DataPlan(participants=7)
    assert parse_simulation("").engine == EngineSection()  # in-process unless asked


@pytest.mark.parametrize("table, key", [
    ('engine = "spark"', "simulation.engine: must be one of inprocess, ray, got 'spark'"),
    ("engine = 3", "simulation.engine: must be a string"),
    ("[simulation.ray]\ncpus_per_worker = 0", "simulation.ray.cpus_per_worker: must be in (0, 1024]"),
    ("[simulation.ray]\ngpus_per_worker = -1", "simulation.ray.gpus_per_worker: must be in [0, 64]"),
    ("[simulation.ray]\nworkers = -2", "simulation.ray.workers: must be in [0, 100000]"),
    ("[simulation.ray]\nmemory_mb = 1.5", "simulation.ray.memory_mb: must be an integer"),
    ('[simulation.ray]\naddress = "auto"\nnum_cpus = 2', "simulation.ray.num_cpus: sizes the local Ray"),
    ("[simulation.ray]\nnodes = 3", "simulation.ray.nodes: unknown key"),
    ("ray = 3", "simulation.ray: must be a table"),
    ('engin = "ray"', "simulation.engin: unknown key (allowed: dataset, engine, format, participants, partition, "
                      "ray, seed, test_size)"),
])
def test_a_bad_engine_key_is_named_at_load(table: str, key: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(key)):
        parse_simulation("[simulation]\n" + table + "\n", "sim.toml")


def _simulate(tmp_path: Path, *flags: str) -> list[str]:
    data = write_toy_dataset(tmp_path / "toy.jsonl", 40, 3)
    return ["simulate", "--dataset", str(data), "--test-size", "10", "--participants", "2", "--set", "job.rounds=1",
            "--set", 'task.label_names=["neg", "pos"]', "--set", 'task.label_words=["bad", "good"]', *flags]


def test_address_without_the_ray_engine_is_one_line(tmp_path: Path, cli_logs: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_simulate(tmp_path, "--address", "auto")) == 2
    assert capsys.readouterr().err == "fedprompt: error: --address: names the Ray cluster of the ray engine; add --engine ray\n"


def test_a_missing_ray_is_one_line_naming_the_extra(tmp_path: Path, cli_logs: None, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where the extra is not installed
    assert main(_simulate(tmp_path, "--engine", "ray", "--no-progress")) == 2
    err = capsys.readouterr().err
    assert err == f"fedprompt: error: {RAY_MISSING}\n" and "pip install 'fedprompt[ray]'" in err


def test_a_site_group_loads_one_plm_for_all_its_sites(tiny_encoder_dir: Path) -> None:
    """What each Ray worker holds: many sites, one frozen PLM, each site its own prompt and learner."""
    config = tiny_job(tiny_encoder_dir, rounds=1, allowed_participants=tuple(site_name(k) for k in range(4)))
    coordinator = SimCoordinator()
    job_id = coordinator.create(dump_toml(config))
    group = SiteGroup(SitePlan(config, AttackSection(), frozenset()), job_id, dict(enumerate(toy_sites(4))),
                      coordinator.link)
    for k in group.runtimes:
        group.join(k)
    learners = [runtime.learner for runtime in group.runtimes.values()]
    assert {id(learner.model.backbone) for learner in learners} == {id(group.backbone.model)}  # type: ignore[union-attr]
    assert len({id(learner) for learner in learners}) == 4


def test_only_the_ray_engine_imports_ray() -> None:
    """Ray is an optional extra: the CLI, ``simulate`` and even the Ray engine's module load without it."""
    code = ("import sys, fedprompt.app.cli, fedprompt.app.simulate, fedprompt.app.engines.ray_engine; "
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"
