"""Cost and utility of record-level DP-SGD on Rotten Tomatoes, measured in one run.

``dp_step_over_plain_step``: seconds per local training step with DP-SGD (Opacus per-example gradients of the
prompt modules, clipping, noise, accounting, Poisson sampling at the same expected batch size) over a plain
step, same model and data, alternating repetitions so both see the same machine load.

``utility``: final test accuracy of the demo's job shortened to 3 rounds to stay modest on shared CPUs (same
backbone loaded once, same sites and rounds for every row) at record-level epsilon 1, 3, 8 and without DP
(epsilon null), each site's noise calibrated by Opacus so the job's rounds spend exactly that epsilon at
delta = 1/(10 n).  Two local recipes side by side: the demo's plain one (expected batch 16, 20 steps, lr 0.01)
and a large-batch one (expected batch 256, 4 steps, lr 0.1).  DP-SGD's noise is added once per batch, so its
share of the averaged gradient shrinks with the batch (Abadi et al. 2016; De et al. 2022, "Unlocking
high-accuracy differentially private image classification through scale"): the large recipe is the one to use
with DP, and the bench shows by how much.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

from fedprompt.app.bench.smoke import demo_bench_job, run_size
from fedprompt.app.demo import PLAIN, PRIVATE, DemoOptions, Recipe
from fedprompt.app.report import table, write_json
from fedprompt.app.simulate import simulate
from fedprompt.config import DPSection, JobConfig
from fedprompt.data.datasets import label_indices
from fedprompt.data.shards import PartitionSpec, SiteData, load_split, split_sites
from fedprompt.models import Backbone, build_classifier
from fedprompt.participant.dp import RecordAccountant, plan_record_dp, train_local_dp
from fedprompt.participant.train import train_local


@dataclasses.dataclass(frozen=True)
class Size:
    """How big a run is: the measured one, or ``--smoke``'s, which takes the same path in seconds."""

    sites: int
    rounds: int
    recipes: dict[str, Recipe]  # "small" and "large": the plain recipe and the one to use with DP
    epsilons: tuple[float | None, ...]  # None: without DP
    test_size: int
    timed_steps: int  # per repetition of step_cost
    repeats: int


# The demo's two recipes, the plain one shortened to 20 steps to keep the bench modest.  The smoke's large batch
# still runs as several passes of the physical batch (default 32), as the demo's 256 does.
FULL = Size(sites=3, rounds=3, recipes={"small": dataclasses.replace(PLAIN, steps=20), "large": PRIVATE},
            epsilons=(1.0, 3.0, 8.0, None), test_size=1000, timed_steps=8, repeats=2)
SMOKE = Size(sites=2, rounds=1, recipes={"small": Recipe(batch_size=4, steps=2, lr=0.01),
                                         "large": Recipe(batch_size=48, steps=1, lr=0.1)},
             epsilons=(8.0, None), test_size=40, timed_steps=2, repeats=1)


def step_cost(config: JobConfig, backbone: Backbone, site: SiteData, size: Size) -> dict[str, float]:
    """Mean seconds per plain and per DP-SGD step on one site's data, alternating ``size.repeats`` times."""
    model = build_classifier(config, backbone)
    labels = label_indices(site.train, config.task.label_names)
    train = dataclasses.replace(config.train, max_steps=size.timed_steps)
    plan = dataclasses.replace(plan_record_dp(DPSection(enabled=True), train, size.rounds, len(site.train)),
                               steps_per_round=size.timed_steps)
    plain = private = 0.0
    examples = 0
    for repeat in range(size.repeats):
        began = time.perf_counter()
        train_local(model, site.train, labels, train, seed=repeat)
        plain += time.perf_counter() - began
        began = time.perf_counter()
        result = train_local_dp(model, site.train, labels, train, plan, RecordAccountant("rdp", None))
        private += time.perf_counter() - began
        examples += result.num_examples
    steps = size.timed_steps * size.repeats
    return {"plain_step_s": plain / steps, "dp_step_s": private / steps, "dp_mean_batch": examples / steps,
            "plain_batch": float(config.train.batch_size)}


def main(args: argparse.Namespace) -> int:
    size = run_size(args, FULL, SMOKE)
    small = size.recipes["small"]
    base, backbone = demo_bench_job(args, DemoOptions(participants=size.sites, rounds=size.rounds, steps=small.steps,
                                                      seed=args.seed, dp=False, batch_size=small.batch_size,
                                                      lr=small.lr), threads=1)
    train, test, names = load_split("rotten_tomatoes", size.test_size, args.seed, base.task.label_names)
    sites = split_sites(train, test, names, size.sites, PartitionSpec("iid"), args.seed)
    cost = step_cost(base, backbone, sites[0], size)
    ratio = cost["dp_step_s"] / cost["plain_step_s"]
    print(f"[bench dp] plain step {cost['plain_step_s']:.3f} s, DP step {cost['dp_step_s']:.3f} s "
          f"(mean Poisson batch {cost['dp_mean_batch']:.1f}): ratio {ratio:.3f} (target <= 1.5)", flush=True)
    utility: list[dict[str, Any]] = []
    rows = []
    for name, recipe in size.recipes.items():
        train_section = dataclasses.replace(base.train, batch_size=recipe.batch_size, max_steps=recipe.steps,
                                            lr=recipe.lr)
        for epsilon in size.epsilons:
            dp = DPSection(enabled=epsilon is not None, epsilon=epsilon or DPSection.epsilon)
            config = dataclasses.replace(base, train=train_section, dp=dp)
            sigmas = [plan_record_dp(dp, config.train, size.rounds, len(s.train)).noise_multiplier for s in sites] \
                if dp.enabled else [0.0]
            began = time.perf_counter()
            report = simulate(config, sites, backbone)
            seconds = time.perf_counter() - began
            utility.append({"recipe": name, "batch_size": recipe.batch_size, "steps": recipe.steps,
                            "lr": recipe.lr, "epsilon": epsilon, "accuracy": report["final_accuracy"],
                            "epsilon_spent": report["epsilon"], "delta": report["delta"],
                            "noise_multiplier_max": max(sigmas), "seconds": round(seconds, 1),
                            "rounds": [r["accuracy"] for r in report["rounds"]]})
            rows.append([f"{recipe.batch_size} x {recipe.steps}, lr {recipe.lr}", "inf" if epsilon is None else epsilon,
                         report["final_accuracy"], report["epsilon"],
                         "-" if report["delta"] is None else f"{report['delta']:.2g}", max(sigmas), round(seconds, 1)])
            print(f"[bench dp] {name} batch, epsilon {epsilon}: accuracy {report['final_accuracy']:.4f} "
                  f"in {seconds:.0f} s", flush=True)
    out = {
        "dp_step_over_plain_step": ratio,
        "utility": utility,
        "step_cost": cost,
        "majority_accuracy": report["majority_accuracy"],
        "zero_shot_accuracy": report["zero_shot_accuracy"],
        "settings": {"sites": size.sites, "rounds": size.rounds, "recipes": size.recipes,
                     "step_cost_batch_size": base.train.batch_size, "max_grad_norm": DPSection.max_grad_norm,
                     "accountant": DPSection.accountant, "delta": "1/(10 n) per site", "test_size": size.test_size,
                     "backbone": base.model.path, "seed": args.seed, "timed_steps": size.timed_steps * size.repeats},
        "smoke": bool(args.smoke),
    }
    print(table(["batch x steps", "epsilon", "accuracy", "eps_spent", "delta", "sigma_max", "seconds"], rows))
    print(f"majority {out['majority_accuracy']:.4f} | zero-shot {out['zero_shot_accuracy']:.4f} | "
          f"dp_step_over_plain_step {ratio:.3f}")
    write_json(out, args.report or "reports/bench-dp.json")
    return 0
