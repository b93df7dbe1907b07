"""``simulate`` on the Ray engine: a real local Ray (2 CPUs, one per session), its sites on two worker processes,
against the in-process engine on the same job and seed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedprompt.app.cli import build_parser
from fedprompt.app.engines import EngineSection, RaySection
from fedprompt.app.simulate import simulate, simulation_text
from fedprompt.config import DPSection, HESection, JobConfig
from fedprompt.data.shards import DataPlan
from fedprompt.errors import ConfigError
from fedprompt.promptfile import load_prompt
from tests.support import tiny_job, toy_sites, write_toy_dataset

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]

RAY = EngineSection("ray", RaySection(workers=2))
#: What a site measures of its own run (time, memory), not of the model: no two runs share them.
MEASURED = ("eval_seconds", "peak_rss_mb")


def _both(config: JobConfig, tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The in-process and the Ray report of one job on 5 sites, each exporting its final global prompt and
    keeping its sites' state directories under ``tmp_path/<engine>``."""
    return (simulate(config, toy_sites(5), export=tmp_path / "inprocess.safetensors", state_root=tmp_path / "inprocess"),
            simulate(config, toy_sites(5), export=tmp_path / "ray.safetensors", state_root=tmp_path / "ray",
                     engine=RAY))


def _updates_sent(root: Path) -> list[str]:
    """Every update the sites sent (each site keeps its own in ``updates/round-NNNN.npy``): who trained when."""
    return sorted(str(p.relative_to(root)) for p in root.glob("site-*/updates/*.npy"))


def _model_metrics(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {site: {k: v for k, v in metrics.items() if k not in MEASURED}
            for site, metrics in report["final_by_participant"].items()}


def _round(row: dict[str, Any], *keys: str) -> tuple[Any, ...]:
    return tuple(row[k] for k in ("round", "selected", "aggregated", "metric_reports", *keys))


def test_ray_gives_the_in_process_result_bit_for_bit_on_a_plaintext_job(tiny_encoder_dir: Path,
                                                                        tmp_path: Path) -> None:
    """3 of 5 sites a round on 2 workers (sites 0, 2, 4 on one, 1, 3 on the other): same selections, same final
    global vector to the bit, same metrics on it at every site; plaintext aggregation and metric means are in
    participant-id order, so the order the workers' updates arrive in does not matter."""
    inprocess, ray = _both(tiny_job(tiny_encoder_dir, rounds=3, participants_per_round=3), tmp_path)
    assert inprocess["engine"] == "inprocess" and (ray["engine"], ray["ray_workers"]) == ("ray", 2)
    assert ray["state"] == inprocess["state"] == "done"
    assert _updates_sent(tmp_path / "ray") == _updates_sent(tmp_path / "inprocess") != []
    assert ([_round(r, "accuracy", "loss") for r in ray["rounds"]]
            == [_round(r, "accuracy", "loss") for r in inprocess["rounds"]])
    assert ray["final_accuracy"] == inprocess["final_accuracy"] and ray["zero_shot_loss"] == inprocess["zero_shot_loss"]
    assert _model_metrics(ray) == _model_metrics(inprocess) and len(_model_metrics(ray)) == 5
    assert np.array_equal(load_prompt(tmp_path / "ray.safetensors")[0],
                          load_prompt(tmp_path / "inprocess.safetensors")[0])
    assert (ray["exchanged_params"], ray["plm_params"]) == (inprocess["exchanged_params"], inprocess["plm_params"])


def test_ray_spends_the_in_process_privacy_on_a_dp_job(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    """Record-level DP-SGD and participant-level noise shares draw from OS entropy by design (``participant.dp``:
    noise anyone could regenerate from the seed protects nothing), so no two runs share their accuracy, on one
    engine or two.  What the seed does fix is equal across engines: the selections, the updates aggregated, and
    the privacy spent, record-level and participant-level, round by round."""
    config = dataclasses.replace(tiny_job(tiny_encoder_dir, rounds=2, participants_per_round=3),
                                 dp=DPSection(enabled=True, participant_noise_multiplier=1.0))
    inprocess, ray = _both(config, tmp_path)
    privacy = ("record_epsilon_max", "participant_epsilon")
    assert ray["state"] == inprocess["state"] == "done" and ray["dp"] is True
    assert _updates_sent(tmp_path / "ray") == _updates_sent(tmp_path / "inprocess") != []
    assert [_round(r, *privacy) for r in ray["rounds"]] == [_round(r, *privacy) for r in inprocess["rounds"]]
    assert all(r["participant_epsilon"] > 0 for r in ray["rounds"])
    assert sorted(ray["final_by_participant"]) == sorted(inprocess["final_by_participant"])


def test_ray_runs_an_encrypted_job_to_the_in_process_result_within_ckks_noise(tiny_encoder_dir: Path,
                                                                              tmp_path: Path) -> None:
    """The key relay crosses workers (site 0 deals the key, the sites on the other worker receive it sealed), the
    coordinator folds ciphertexts it cannot read, and each site rebuilds the global.  Encryption draws fresh
    randomness, so the global equals the in-process one to CKKS precision, not to the bit."""
    config = dataclasses.replace(tiny_job(tiny_encoder_dir, rounds=2, participants_per_round=3),
                                 he=HESection(enabled=True, mode="single_key"))
    inprocess, ray = _both(config, tmp_path)
    assert ray["state"] == inprocess["state"] == "done"
    assert _updates_sent(tmp_path / "ray") == _updates_sent(tmp_path / "inprocess") != []
    assert [r["accuracy"] for r in ray["rounds"]] == [r["accuracy"] for r in inprocess["rounds"]]
    assert np.allclose(load_prompt(tmp_path / "ray.safetensors")[0], load_prompt(tmp_path / "inprocess.safetensors")[0],
                       rtol=0.0, atol=1e-5)


@pytest.mark.parametrize("ray, key", [
    (RaySection(gpus_per_worker=1.0), "simulation.ray.gpus_per_worker"),  # the test cluster has no GPU
    (RaySection(workers=3), "simulation.ray.workers"),  # 3 workers of 1 CPU on 2 CPUs would wait forever
])
def test_resources_the_cluster_cannot_give_are_refused_naming_the_key(tiny_encoder_dir: Path, ray: RaySection,
                                                                       key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        simulate(tiny_job(tiny_encoder_dir, rounds=1), toy_sites(3), engine=EngineSection("ray", ray))


def test_the_simulate_command_runs_the_engine_its_file_names(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    data = write_toy_dataset(tmp_path / "toy.jsonl", 60, 5)
    text = simulation_text(tiny_job(tiny_encoder_dir, rounds=1), DataPlan(str(data), 3, 15))
    sim = tmp_path / "sim.toml"  # what `data prepare --write-job` writes, with the engine chosen in the file
    sim.write_text(text.replace("[simulation]\n", '[simulation]\nengine = "ray"\n', 1)
                   + "\n[simulation.ray]\nworkers = 2\n", encoding="utf-8")
    args = build_parser().parse_args(["simulate", "--config", str(sim), "--no-progress", "--report",
                                      str(tmp_path / "r.json")])
    assert args.fn(args) == 0
    report = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert (report["engine"], report["ray_workers"], report["state"]) == ("ray", 2, "done")
