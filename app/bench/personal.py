"""Prompt levels (PLMM): global-only vs global+expert vs global+expert+personal prompts, one run.

Non-IID BBC News where cohorts genuinely differ: two cohorts of three sites, each cohort sees a different
subset of the five topics (a "finance desk": business, politics, tech; a "culture desk": entertainment,
sport, tech), and within a cohort every site's label mix is drawn from Dirichlet(``ALPHA``) over its
cohort's topics.  Each site's test split has its own training label mix, so accuracy is measured on each
participant's own distribution; the table gives the mean and the worst participant.

The three runs share the backbone (loaded once), the sites, the rounds, the local step budget and the
total prompt length (``TOKENS`` = 16 virtual tokens), so only the split into levels differs:

- ``global``: 16 global tokens (levels off: plain FedAvg prompt tuning);
- ``global+expert``: 8 global + 8 expert tokens, the expert level averaged per admin-given cohort;
- ``global+expert+personal``: 8 global + 4 expert + 4 personal tokens, the personal level never leaving
  its site.

A fourth run repeats the three-level setting with ``cohorts_from = "discover"`` (cohorts clustered from
the Gram matrix of round 1's updates) and reports whether discovery recovered the planted cohorts.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedprompt.app.bench.smoke import tiny_model
from fedprompt.app.report import saved_figure, table, write_json
from fedprompt.app.simulate import simulate
from fedprompt.config import (
    CohortSpec,
    JobConfig,
    JobSection,
    LevelsSection,
    ModelSection,
    TaskSection,
    TrainSection,
)
from fedprompt.data.datasets import BUILTIN, Example
from fedprompt.data.shards import SiteData, load_split
from fedprompt.models import load_backbone

DATASET = "bbc_news"
COHORTS = {"finance-desk": ("business", "politics", "tech"), "culture-desk": ("entertainment", "sport", "tech")}
ALPHA = 0.5
TOKENS = 16
MAX_LENGTH = 64
SETTINGS = {  # levels -> (global, expert, personal) tokens; (TOKENS, 0, 0) means levels off
    "global": (TOKENS, 0, 0),
    "global+expert": (8, 8, 0),
    "global+expert+personal": (8, 4, 4),
}


@dataclasses.dataclass(frozen=True)
class Size:
    """How big a run is: the measured one, or ``--smoke``'s, which takes the same path in seconds."""

    sites_per_cohort: int
    train_per_site: int
    test_per_site: int
    test_split: int  # the global test split the sites draw from
    rounds: int
    steps: int  # per site and round
    batch: int
    threads: int


# FULL's test split holds 160 per topic; a topic shared by both cohorts is drawn by 6 sites.  SMOKE keeps 2 sites
# per cohort (an admin cohort needs at least two members) and 2 rounds (round 2 runs on the discovered cohorts).
FULL = Size(sites_per_cohort=3, train_per_site=48, test_per_site=40, test_split=800, rounds=4, steps=8, batch=8,
            threads=2)
SMOKE = Size(sites_per_cohort=2, train_per_site=8, test_per_site=5, test_split=100, rounds=2, steps=2, batch=4,
             threads=1)


def site_names(size: Size) -> dict[str, list[str]]:
    """Cohort -> its sites, named as ``simulate`` names them (site-0, site-1, ...)."""
    out, k = {}, 0
    for cohort in COHORTS:
        out[cohort] = [f"site-{k + i}" for i in range(size.sites_per_cohort)]
        k += size.sites_per_cohort
    return out


def cohort_sites(train: list[Example], test: list[Example], seed: int,
                 size: Size) -> tuple[list[SiteData], list[dict[str, int]]]:
    """Deal sites cohort by cohort: each site draws a label mix from Dirichlet(ALPHA) over its cohort's topics,
    then takes ``size.train_per_site`` training and ``size.test_per_site`` test examples in that mix (disjoint)."""
    rng = np.random.default_rng(seed)
    pools = {split: {label: [ex for ex in examples if ex.label == label] for label in BUILTIN[DATASET].label_names}
             for split, examples in (("train", train), ("test", test))}
    for by_label in pools.values():
        for examples in by_label.values():
            rng.shuffle(examples)
    sites, mixes = [], []
    for topics in COHORTS.values():
        for _ in range(size.sites_per_cohort):
            mix = rng.dirichlet([ALPHA] * len(topics))
            site: dict[str, list[Example]] = {}
            for split, n_examples in (("train", size.train_per_site), ("test", size.test_per_site)):
                counts = np.floor(mix * n_examples).astype(int)
                counts[np.argmax(mix)] += n_examples - counts.sum()
                site[split] = [ex for label, n in zip(topics, counts, strict=True) for ex in
                               [pools[split][label].pop() for _ in range(min(n, len(pools[split][label])))]]
            mixes.append({label: int(n) for label, n in zip(topics, np.floor(mix * size.train_per_site), strict=True)})
            sites.append(SiteData(site["train"], site["test"]))
    return sites, mixes


def job_config(levels: str, seed: int, size: Size, backbone: str, discover: bool = False) -> JobConfig:
    """Every site in every round, ``size.steps`` local steps per round; the levels split ``TOKENS`` tokens."""
    global_tokens, expert_tokens, personal_tokens = SETTINGS[levels]
    spec = BUILTIN[DATASET]
    n_sites = size.sites_per_cohort * len(COHORTS)
    cohorts = tuple(CohortSpec(name, tuple(members)) for name, members in site_names(size).items())
    return JobConfig(
        job=JobSection(name=f"personal-{levels}", rounds=size.rounds, participants_per_round=n_sites,
                       min_participants=n_sites, round_deadline_s=3600.0, seed=seed),
        model=ModelSection(path=backbone, prompt_length=TOKENS, max_length=MAX_LENGTH),
        task=TaskSection(label_names=spec.label_names, label_words=spec.label_words),
        train=TrainSection(local_epochs=size.steps, max_steps=size.steps, batch_size=size.batch, lr=0.01),
        levels=LevelsSection(enabled=levels != "global", global_tokens=global_tokens, expert_tokens=expert_tokens,
                             personal_tokens=personal_tokens, cohorts_from="discover" if discover else "admin",
                             cohorts=cohorts if expert_tokens and not discover else (), num_cohorts=len(COHORTS),
                             discover_round=1),
    )


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """Mean and worst per-participant accuracy on the final version, each on its own test split."""
    accuracy = {pid: m["accuracy"] for pid, m in sorted(report["final_by_participant"].items())}
    worst = min(accuracy, key=accuracy.__getitem__)
    return {"mean_accuracy": float(np.mean(list(accuracy.values()))), "worst_accuracy": accuracy[worst],
            "worst_participant": worst, "per_participant": accuracy,
            "accuracy_per_round": [r["accuracy"] for r in report["rounds"]], "zero_shot": report["zero_shot_accuracy"]}


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Mean and worst participant accuracy per levels setting, as grouped bars."""
    x = np.arange(len(rows))
    with saved_figure(path) as (_, (ax,)):
        ax.bar(x - 0.2, [r["mean_accuracy"] for r in rows], 0.4, label="mean participant")
        ax.bar(x + 0.2, [r["worst_accuracy"] for r in rows], 0.4, label="worst participant")
        ax.set_xticks(x, [r["levels"] for r in rows])
        ax.set_ylabel("accuracy on own test split")
        ax.set_ylim(0, 1)
        ax.legend()
        ax.grid(axis="y", alpha=0.3)
        ax.set_title("BBC News, 2 cohorts x 3 sites: prompt levels")


def main(args: argparse.Namespace) -> int:
    size = SMOKE if args.smoke else FULL
    torch.set_num_threads(size.threads)
    backbone_path = tiny_model() if args.smoke else "builtin:minilm"
    backbone = load_backbone(backbone_path)
    train, test, _ = load_split(DATASET, size.test_split, args.seed, BUILTIN[DATASET].label_names)
    sites, mixes = cohort_sites(train, test, args.seed, size)
    rows, details, seconds = [], {}, {}
    for levels in SETTINGS:
        began = time.perf_counter()
        report = simulate(job_config(levels, args.seed, size, backbone_path), sites, backbone)
        seconds[levels] = round(time.perf_counter() - began, 1)
        details[levels] = summarise(report)
        rows.append({"levels": levels, "mean_accuracy": details[levels]["mean_accuracy"],
                     "worst_accuracy": details[levels]["worst_accuracy"]})
        print(f"[bench personal] {levels}: mean {rows[-1]['mean_accuracy']:.4f}, worst "
              f"{rows[-1]['worst_accuracy']:.4f} in {seconds[levels]:.0f} s", flush=True)
    began = time.perf_counter()
    found = simulate(job_config("global+expert+personal", args.seed, size, backbone_path, discover=True), sites,
                     backbone)
    seconds["discover"] = round(time.perf_counter() - began, 1)
    planted = {site: cohort for cohort, members in site_names(size).items() for site in members}
    discovered = discovered_cohorts(found, planted)
    out = {
        "rows": rows,
        "details": details,
        "discovered_cohorts": discovered,
        "settings": {"dataset": DATASET, "cohorts": {c: list(t) for c, t in COHORTS.items()},
                     "sites": site_names(size), "train_label_mix": mixes, "alpha": ALPHA,
                     "train_per_site": size.train_per_site, "test_per_site": size.test_per_site,
                     "rounds": size.rounds, "steps_per_site_round": size.steps, "batch_size": size.batch,
                     "total_prompt_tokens": TOKENS,
                     "tokens": {k: dict(zip(("global", "expert", "personal"), v, strict=True)) for k, v in SETTINGS.items()},
                     "backbone": backbone_path, "max_length": MAX_LENGTH, "seed": args.seed,
                     "torch_threads": size.threads},
        "seconds": seconds,
        "smoke": bool(args.smoke),
    }
    print(table(["levels", "mean_accuracy", "worst_accuracy", "worst_participant"],
                [[r["levels"], r["mean_accuracy"], r["worst_accuracy"], details[r["levels"]]["worst_participant"]]
                 for r in rows]))
    print(f"discovered cohorts {discovered['assignment']} recover the planted ones: {discovered['recovered']}; "
          f"that run: mean {discovered['mean_accuracy']:.4f}, worst {discovered['worst_accuracy']:.4f}")
    report_path = Path(args.report or "reports/bench-personal.json")
    write_json(out, report_path)
    plot(rows, report_path.with_suffix(".png"))
    return 0


def discovered_cohorts(report: dict[str, Any], planted: dict[str, str]) -> dict[str, Any]:
    """Which cohort discovery put each site in, whether that partition equals the planted one, and the run's
    mean and worst participant accuracy."""
    assignment = dict(report["cohorts"])
    groups = {frozenset(s for s in assignment if assignment[s] == c) for c in assignment.values()}
    truth = {frozenset(s for s in planted if planted[s] == c) for c in planted.values()}
    summary = summarise(report)
    return {"assignment": assignment, "recovered": groups == truth, "mean_accuracy": summary["mean_accuracy"],
            "worst_accuracy": summary["worst_accuracy"], "per_participant": summary["per_participant"]}
