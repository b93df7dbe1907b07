"""``fedprompt bench simulate-scale``: the in-process and the Ray engine on the same jobs, one after the other on
this machine (issue 33): wall time, rounds, and whether the final metrics and global agree for the same seed.

Two jobs: a real small model (MiniLM with a 4-token prompt) on Rotten Tomatoes dealt to 100 sites, 10 a round;
and 1,000 sites, 100 a round, on a tiny random model (the smoke models), where the protocol and the
bookkeeping cost, not the model.  Each engine's time is ``simulate``'s whole run: loading the PLM (the Ray
workers each load their own), starting the Ray workers, every round; the local Ray itself is started once for
the bench and timed apart (``ray_start_seconds``), as a cluster would already be up.  It uses this machine's
CPUs, one worker per CPU, each on one torch thread as the in-process run is: its speed-up is whatever these cores give, below 1 where the actor calls cost more than
the parallel training saves; the point is that the same command runs on a cluster (``--address``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedprompt.app.bench.smoke import run_size, tiny_model
from fedprompt.app.engines import EngineSection
from fedprompt.app.engines.ray_engine import import_ray
from fedprompt.app.report import table, write_json
from fedprompt.app.simulate import simulate
from fedprompt.config import JobConfig, JobSection, ModelSection, TaskSection, TrainSection
from fedprompt.data.datasets import BUILTIN
from fedprompt.data.shards import PartitionSpec, load_split, split_sites
from fedprompt.promptfile import load_prompt

DATASET = "rotten_tomatoes"
#: What a site measures of its own run (time, memory), not of the model: no two runs share them.
MEASURED = ("eval_seconds", "peak_rss_mb")


@dataclasses.dataclass(frozen=True)
class Size:
    """The two jobs' sizes: the measured run, or ``--smoke``'s (the same path in seconds)."""

    participants: int  # the real-model job
    per_round: int
    rounds: int
    steps: int  # local steps per site and round
    synthetic_participants: int  # the tiny-model job
    synthetic_per_round: int
    test_size: int


FULL = Size(participants=100, per_round=10, rounds=3, steps=5, synthetic_participants=1000, synthetic_per_round=100,
            test_size=1000)
SMOKE = Size(participants=6, per_round=3, rounds=1, steps=1, synthetic_participants=12, synthetic_per_round=4,
             test_size=40)


def _job(model: str, participants_per_round: int, rounds: int, steps: int, seed: int) -> JobConfig:
    spec = BUILTIN[DATASET]
    return JobConfig(
        job=JobSection(name="simulate-scale", rounds=rounds, participants_per_round=participants_per_round,
                       min_participants=participants_per_round, round_deadline_s=3600.0, seed=seed,
                       allowed_participants=("*",)),
        model=ModelSection(path=model, prompt_length=4, max_length=64),
        task=TaskSection(label_names=spec.label_names, label_words=spec.label_words),
        train=TrainSection(local_epochs=1, max_steps=steps, batch_size=8, lr=0.05))


def _model_metrics(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {site: {k: v for k, v in m.items() if k not in MEASURED} for site, m in report["final_by_participant"].items()}


def compare(name: str, config: JobConfig, participants: int, test_size: int, seed: int, out: Path) -> dict[str, Any]:
    """Run ``config`` on ``participants`` IID sites on both engines; their times and whether they agree."""
    train, test, names = load_split(DATASET, test_size, seed, config.task.label_names)
    sites = split_sites(train, test, names, participants, PartitionSpec("iid"), seed)
    reports, seconds = {}, {}
    for engine in ("inprocess", "ray"):
        began = time.perf_counter()
        reports[engine] = simulate(config, sites, export=out / f"{name}-{engine}.safetensors",
                                   engine=EngineSection(engine))
        seconds[engine] = round(time.perf_counter() - began, 2)
        print(f"[bench simulate-scale] {name} on {engine}: {seconds[engine]:.1f} s, final accuracy "
              f"{reports[engine]['final_accuracy']:.4f}", flush=True)
    inprocess, ray = reports["inprocess"], reports["ray"]
    vectors = [load_prompt(out / f"{name}-{engine}.safetensors")[0] for engine in ("inprocess", "ray")]
    return {"name": name, "model": config.model.path, "participants": participants,
            "per_round": config.job.participants_per_round, "rounds": len(ray["rounds"]),
            "rounds_inprocess": len(inprocess["rounds"]), "inprocess_seconds": seconds["inprocess"],
            "ray_seconds": seconds["ray"], "ray_speedup": round(seconds["inprocess"] / seconds["ray"], 3),
            "ray_workers": ray["ray_workers"], "final_accuracy": ray["final_accuracy"],
            "final_accuracy_inprocess": inprocess["final_accuracy"],
            "equal_final_metrics": _model_metrics(ray) == _model_metrics(inprocess)
            and [r["accuracy"] for r in ray["rounds"]] == [r["accuracy"] for r in inprocess["rounds"]],
            "equal_final_global": bool(np.array_equal(vectors[0], vectors[1]))}


def main(args: argparse.Namespace) -> int:
    import torch

    size = run_size(args, FULL, SMOKE)
    torch.set_num_threads(1)  # as each Ray worker (one CPU each): the same arithmetic in both engines
    real = tiny_model() if args.smoke else "builtin:minilm"
    jobs = [("small_model", _job(real, size.per_round, size.rounds, size.steps, args.seed), size.participants),
            ("synthetic", _job(tiny_model(), size.synthetic_per_round, size.rounds, size.steps, args.seed),
             size.synthetic_participants)]
    if args.smoke:  # the second job takes the same path; starting Ray's workers alone costs ~15 s a job on 2 cores
        jobs = jobs[:1]
    ray = import_ray()
    began = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_start = round(time.perf_counter() - began, 2)
    try:
        with tempfile.TemporaryDirectory(prefix="fedprompt-simulate-scale-") as tmp:
            runs = [compare(name, config, n, size.test_size, args.seed, Path(tmp)) for name, config, n in jobs]
    finally:
        ray.shutdown()
    print(table(["job", "sites", "per round", "rounds", "in-process s", "ray s", "ray speed-up", "equal metrics",
                 "equal global"],
                [[r["name"], r["participants"], r["per_round"], r["rounds"], r["inprocess_seconds"], r["ray_seconds"],
                  r["ray_speedup"], r["equal_final_metrics"], r["equal_final_global"]] for r in runs]))
    print(f"(starting the local Ray, once for both jobs and not in the Ray times: {ray_start:.1f} s)")
    write_json({"runs": runs, "cpus": os.cpu_count(), "ray_start_seconds": ray_start, "smoke": bool(args.smoke),
                "settings": {**dataclasses.asdict(size), "dataset": DATASET, "prompt_length": 4, "seed": args.seed,
                             "torch_threads": 1}},
               args.report or "reports/bench-simulate-scale.json")
    return 0
