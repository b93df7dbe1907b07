"""``simulate`` drives the real coordinator and participant code in one process."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from fedprompt.app.attacks import AttackSection
from fedprompt.app.cli import build_parser
from fedprompt.app.local_link import LocalLink
from fedprompt.app.simulate import simulate
from fedprompt.config import RobustSection
from fedprompt.coordinator.checkpoint import Checkpointer, read_checkpoint
from fedprompt.coordinator.jobs import JobManager
from fedprompt.participant.train import memoized, train_local
from tests.support import REPO, tiny_job, toy_sites, write_toy_dataset


def test_simulation_completes_every_round_with_reports(tiny_encoder_dir: Path) -> None:
    report = simulate(tiny_job(tiny_encoder_dir, rounds=3), toy_sites(3))
    assert report["state"] == "done"
    assert [r["round"] for r in report["rounds"]] == [1, 2, 3]
    assert all(r["metric_reports"] == 3 and r["accuracy"] is not None for r in report["rounds"])
    assert report["zero_shot_accuracy"] is not None and report["exchanged_params"] > 0
    assert all(r["bytes_up"] == 3 * 4 * report["exchanged_params"] for r in report["rounds"])


def test_a_long_utf8_job_name_runs_end_to_end_and_names_no_file(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    """60 x "é" is 120 bytes of UTF-8: a valid name; files on both sides are named after the opaque job id."""
    name = "é" * 60
    managers: list[JobManager] = []

    def link(jobs: JobManager, identity: str) -> LocalLink:
        managers.append(jobs)
        return LocalLink(jobs, identity)

    report = simulate(tiny_job(tiny_encoder_dir, name=name, rounds=1), toy_sites(3), state_root=tmp_path / "sites",
                      link=link)
    assert report["state"] == "done" and [r["round"] for r in report["rounds"]] == [1]
    job = managers[0].job(name)
    assert job.job_id == report["job_id"] and name not in job.job_id
    Checkpointer(tmp_path / "checkpoints").sync(managers[0])
    assert read_checkpoint(tmp_path / "checkpoints" / f"{job.job_id}.safetensors")[0].round == 1
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert "sites/site-0/updates/round-0001.npy" in files and not any("é" in f for f in files)
    assert json.loads((tmp_path / "sites" / "site-2" / "participant.json").read_text())["job_id"] == job.job_id


def test_attacked_simulation_reports_asr_and_detection(tiny_encoder_dir: Path) -> None:
    config = tiny_job(tiny_encoder_dir, rounds=2, participants_per_round=10, min_participants=7,
                      aggregator="multi_krum")
    config = dataclasses.replace(config, robust=RobustSection(max_malicious=2, quarantine_after=5))
    attack = AttackSection(kind="backdoor", malicious_fraction=0.2, scale=20.0, target_label="pos")
    report = simulate(config, toy_sites(10), attack=attack)
    assert report["state"] == "done" and len(report["malicious"]) == 2
    assert report["asr"] is None or 0.0 <= report["asr"] <= 1.0
    first = report["detection"]["rounds"][0]
    assert sorted(first["rejected"]) == sorted(report["malicious"]) and first["precision"] == first["recall"] == 1.0
    plain = simulate(dataclasses.replace(config, job=dataclasses.replace(config.job, aggregator="fedavg")),
                     toy_sites(10), attack=attack)
    assert plain["detection"] is None and "asr" in plain


def test_memoized_training_replays_identical_rounds_without_retraining(tiny_encoder_dir: Path) -> None:
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return train_local(*args, **kwargs)

    trainer = memoized(counting)
    config = tiny_job(tiny_encoder_dir, rounds=2)
    first = simulate(config, toy_sites(3), trainer=trainer)
    trained = len(calls)
    second = simulate(config, toy_sites(3), trainer=trainer)
    assert trained == 6 and len(calls) == trained
    assert [r["accuracy"] for r in first["rounds"]] == [r["accuracy"] for r in second["rounds"]]


def test_simulate_command_runs_the_backdoor_example(tiny_encoder_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    data = write_toy_dataset(tmp_path / "toy.jsonl", 160, 7)
    argv = ["simulate", "--config", str(REPO / "examples" / "backdoor.toml"), "--dataset", str(data),
            "--test-size", "40", "--report", str(tmp_path / "r.json"),
            "--set", f'model.path="{tiny_encoder_dir}"', "--set", 'task.label_names=["neg", "pos"]',
            "--set", 'task.label_words=["bad", "good"]', "--set", 'attack.target_label="pos"',
            "--set", 'job.aggregator="norm_bound"', "--set", "train.max_steps=1"]
    args = build_parser().parse_args(argv)
    assert args.fn(args) == 0
    out = capsys.readouterr().out
    assert "attack backdoor by site-" in out and "ASR" in out and "detection precision" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["state"] == "done" and len(report["malicious"]) == 2 and report["detection"] is not None
