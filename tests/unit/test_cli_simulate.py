"""``fedprompt simulate`` as a user runs it on their own data: a progress bar over the rounds (``--no-progress``
turns it off), ``--threads``, and ``--export`` writing the final prompt that ``predict --prompt`` reads."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import refused_in_one_line, run_fedprompt, toy_job


def test_an_exported_simulation_prompt_classifies_texts(tmp_path: Path, tiny_encoder_dir: Path) -> None:
    _, job, _ = toy_job(tmp_path, tiny_encoder_dir)
    out = tmp_path / "prompts" / "out.safetensors"
    result = run_fedprompt(["simulate", "--config", str(job), "--export", str(out), "--threads", "1",
                            "--set", "job.rounds=1"], timeout=600)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "rounds: 100%" in result.stderr and "1/1" in result.stderr  # the bar, on stderr
    assert f"final prompt written to {out}; try it with: fedprompt predict --prompt {out} TEXT" in result.stdout
    predict = run_fedprompt(["predict", "--prompt", str(out), "a lovely film"])
    assert predict.returncode == 0, predict.stderr[-3000:]
    answer = json.loads(predict.stdout.strip().splitlines()[-1])
    assert answer["text"] == "a lovely film" and answer["label"] in ("neg", "pos")


def test_a_threshold_simulation_enrols_its_sites_and_runs_from_the_command_line(
        tmp_path: Path, tiny_encoder_dir: Path) -> None:
    """A prepared job file names no members; ``simulate`` enrols its sites, so a threshold job (whose key is
    shared among named members) runs as written, with every round aggregated by both sites."""
    _, job, _ = toy_job(tmp_path, tiny_encoder_dir)
    report = tmp_path / "report.json"
    result = run_fedprompt(["simulate", "--config", str(job), "--no-progress", "--report", str(report), "--set",
                            "job.rounds=2", "--set", "he.enabled=true", "--set", 'he.mode="threshold"'], timeout=600)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    rounds = json.loads(report.read_text(encoding="utf-8"))["rounds"]
    assert [(r["round"], r["updates"]) for r in rounds] == [(1, 2), (2, 2)]


def test_threads_below_one_are_refused_in_one_line() -> None:
    result = run_fedprompt(["simulate", "--threads", "0"])
    assert refused_in_one_line(result, "--threads").endswith("--threads must be at least 1, got 0")


def test_export_with_levels_is_refused_before_the_run(tmp_path: Path) -> None:
    result = run_fedprompt(["simulate", "--export", str(tmp_path / "out.safetensors"), "--set", "levels.enabled=true",
                            "--set", "model.prompt_length=16"])
    line = refused_in_one_line(result, "--export")
    assert "levels.enabled" in line and not (tmp_path / "out.safetensors").exists()


def test_each_round_prints_a_line_as_it_finishes_before_the_table_and_no_progress_hides_the_bar(
        tmp_path: Path, tiny_encoder_dir: Path) -> None:
    _, job, _ = toy_job(tmp_path, tiny_encoder_dir)
    result = run_fedprompt(["simulate", "--config", str(job), "--no-progress", "--set", "job.rounds=2"], timeout=600)
    assert result.returncode == 0 and "rounds:" not in result.stderr, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    live = [k for k, line in enumerate(lines) if line.startswith("round ") and ":" in line]
    header = next(k for k, line in enumerate(lines) if line.split()[:2] == ["round", "accuracy"])
    assert [lines[k].split(":")[0] for k in live] == ["round 1", "round 2"] and live[-1] < header
    assert all(", aggregated 2/2, " in lines[k] and " accuracy 0." in lines[k] for k in live), lines


def test_a_lora_simulation_reports_its_method_and_predict_runs_it_on_a_bfloat16_plm(
        tmp_path: Path, tiny_causal_dir: Path) -> None:
    """``[peft]`` travels in the exported prompt file: ``predict`` rebuilds the LoRA adapter, here on a bfloat16
    PLM (``--dtype``); a GPU that is not there is refused in one line naming ``--device``."""
    _, job, _ = toy_job(tmp_path, tiny_causal_dir)
    out = tmp_path / "lora.safetensors"
    result = run_fedprompt(["simulate", "--config", str(job), "--export", str(out), "--no-progress",
                            "--set", "job.rounds=1", "--set", "peft.method=lora", "--set", "peft.lora_rank=2",
                            "--set", "task.label_words=[\"bad\", \"good\"]"], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "%, lora)" in result.stdout  # exchanged floats, their share of the PLM, and the method
    predict = run_fedprompt(["predict", "--prompt", str(out), "--device", "cpu", "--dtype", "bfloat16", "a lovely film"])
    assert predict.returncode == 0, predict.stderr[-3000:]
    answer = json.loads(predict.stdout.strip().splitlines()[-1])
    assert answer["label"] in ("neg", "pos") and 0.5 <= answer["confidence"] <= 1
    refused = run_fedprompt(["predict", "--prompt", str(out), "--device", "cuda:99", "a lovely film"])
    assert refused_in_one_line(refused, "--device").endswith("--device: 'cuda:99' is not available here "
                                                             f"(torch sees {_cuda_count()} CUDA device(s))")


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def test_an_absent_gpu_is_refused_before_the_run() -> None:
    result = run_fedprompt(["simulate", "--device", "cuda:99"])
    assert refused_in_one_line(result, "--device").endswith("--device: 'cuda:99' is not available here "
                                                            f"(torch sees {_cuda_count()} CUDA device(s))")
    assert refused_in_one_line(run_fedprompt(["simulate", "--dtype", "half"]), "--dtype")
