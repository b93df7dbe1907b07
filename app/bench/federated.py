"""Centralized vs federated prompt tuning (IID and Dirichlet alpha=0.5) on Rotten Tomatoes, one run.

Same backbone (loaded once), same train/test split, same number of rounds and the same total number of
local training steps: federated runs do ``rounds x sites x steps``; the centralized run is one site holding
all training data doing ``rounds x (sites x steps)``, in plaintext (the federated runs are the demo's, with HE).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

from fedprompt.app.bench.smoke import demo_bench_job, run_size
from fedprompt.app.demo import DemoOptions
from fedprompt.app.report import table, write_json
from fedprompt.app.simulate import simulate
from fedprompt.config import HESection, JobConfig
from fedprompt.data.shards import PartitionSpec, load_split, split_sites


@dataclasses.dataclass(frozen=True)
class Size:
    """How big a run is: the measured one, or ``--smoke``'s, which takes the same path in seconds."""

    sites: int
    rounds: int
    steps: int  # per site and round
    test_size: int
    threads: int


FULL = Size(sites=3, rounds=5, steps=30, test_size=1000, threads=2)
SMOKE = Size(sites=2, rounds=1, steps=2, test_size=40, threads=1)


def centralized(config: JobConfig, steps: int) -> JobConfig:
    """``config`` for one site doing ``steps`` local steps per round, in plaintext: with one site there is
    nothing to hide an update from, and an encrypted job needs two key holders to check each aggregate."""
    return dataclasses.replace(config, job=dataclasses.replace(config.job, participants_per_round=1, min_participants=1),
                               train=dataclasses.replace(config.train, max_steps=steps), he=HESection(enabled=False))


def main(args: argparse.Namespace) -> int:
    size = run_size(args, FULL, SMOKE)
    base, backbone = demo_bench_job(args, DemoOptions(participants=size.sites, rounds=size.rounds, steps=size.steps,
                                                      seed=args.seed, dp=False), size.threads)
    train, test, names = load_split("rotten_tomatoes", size.test_size, args.seed, base.task.label_names)
    runs = {
        "centralized": (centralized(base, size.sites * size.steps),
                        split_sites(train, test, names, 1, PartitionSpec("iid"), args.seed)),
        "federated_iid": (base, split_sites(train, test, names, size.sites, PartitionSpec("iid"), args.seed)),
        "federated_dirichlet": (base, split_sites(train, test, names, size.sites,
                                                  PartitionSpec("dirichlet", alpha=0.5), args.seed)),
    }
    results: dict[str, Any] = {}
    rows = []
    for name, (config, sites) in runs.items():
        began = time.perf_counter()
        report = simulate(config, sites, backbone)
        seconds = time.perf_counter() - began
        results[name] = report
        rows.append([name, len(sites), report["final_accuracy"], report["zero_shot_accuracy"],
                     report["majority_accuracy"], round(seconds, 1)])
        print(f"[bench federated] {name}: accuracy {report['final_accuracy']:.4f} in {seconds:.0f} s", flush=True)
    out = {
        "centralized_accuracy": results["centralized"]["final_accuracy"],
        "federated_iid_accuracy": results["federated_iid"]["final_accuracy"],
        "federated_dirichlet_accuracy": results["federated_dirichlet"]["final_accuracy"],
        "majority_accuracy": results["centralized"]["majority_accuracy"],
        "zero_shot_accuracy": results["centralized"]["zero_shot_accuracy"],
        "settings": {"sites": size.sites, "rounds": size.rounds, "steps_per_site_round": size.steps,
                     "dirichlet_alpha": 0.5, "total_steps": size.sites * size.rounds * size.steps,
                     "test_size": size.test_size, "backbone": base.model.path, "seed": args.seed},
        "runs": {k: {"rounds": v["rounds"], "seconds": v["seconds"]} for k, v in results.items()},
        "smoke": bool(args.smoke),
    }
    out["iid_gap_points"] = 100 * (out["centralized_accuracy"] - out["federated_iid_accuracy"])
    out["dirichlet_gap_points"] = 100 * (out["centralized_accuracy"] - out["federated_dirichlet_accuracy"])
    print(table(["run", "sites", "accuracy", "zero_shot", "majority", "seconds"], rows))
    print(f"gap to centralized: IID {out['iid_gap_points']:.2f} points (target <= 2), "
          f"Dirichlet {out['dirichlet_gap_points']:.2f} points (target <= 5)")
    write_json(out, args.report or "reports/bench-federated.json")
    return 0
