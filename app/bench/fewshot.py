"""Few-shot federations: labelled-only vs pseudo-label augmented (AUG-FedPrompt) vs fully labelled, one run.

Cai et al., "AUG-FedPrompt" (2022) / "Federated Few-Shot Learning for Mobile NLP" (2023) report that
pseudo-labelling the sites' unlabelled data closes the gap between few-shot federated prompt tuning and
full-set fine-tuning, at a significant system cost.  This benchmark measures both on Rotten Tomatoes and
BBC News with, per dataset, the same backbone, split, rounds and local training rule in every setting:
``EPOCHS`` passes over the site's training set per round (labelled plus, when augmenting, pseudo-labelled),
capped at ``FULL.max_steps`` steps.  As in AUG-FedPrompt, pseudo-labels add data
*and* the compute to train on it: that is the system cost the paper reports, and the one measured here (a
fixed step budget would instead make pseudo-labels displace labelled examples).  The settings:

- ``fewshot``: each site trains on its few labelled examples only (``--shots``, default 32, per site on
  average, quantity-skewed by Dirichlet(2), label mix near-balanced by Dirichlet(10));
- ``fewshot_aug``: the same, plus ``[augment]`` pseudo-labels of its (capped) unlabelled pool;
- ``full``: each site's whole share is labelled (its few labels + the pool with its true labels).

The pool's true labels reach training only in ``full``; in ``fewshot_aug`` they are used solely to
measure pseudo-label accuracy (``SiteData.unlabelled_gold``).  With ``--seeds N`` every setting runs on N
seeds (split, partition, initial prompt and training all change) and rows report the mean accuracy with
its standard deviation: one seed's differences are mostly noise at these test sizes.

The label mix is near-balanced on purpose.  With three sites, Dirichlet(1) label skew on a binary task makes
the whole federation's labelled set lopsided in about a quarter of the draws (measured: 84 % "rotten" for
seed 0, against 42 % in the test split), and the few-shot prompt then predicts one class for every round:
that is label shift, which ``bench personal`` studies, not the few-shot setting measured here.

``--smoke`` runs the same settings, simulations and plot on tiny random models of each backbone's kind, two
sites, a warm-up round and one augmented round, and a short test split and pool (``SMOKE``, ``smoke_setup``).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path
from statistics import mean, stdev
from typing import Any

import torch

from fedprompt.app.bench.smoke import run_size, tiny_model
from fedprompt.app.report import saved_figure, table, write_json
from fedprompt.app.simulate import simulate
from fedprompt.config import AugmentSection, JobConfig, JobSection, ModelSection, TaskSection, TrainSection
from fedprompt.data.datasets import BUILTIN, Example
from fedprompt.data.shards import PartitionSpec, SiteData, load_split, split_sites
from fedprompt.errors import ConfigError
from fedprompt.models import Backbone, load_backbone

EPOCHS = 2
BATCH = 8
WARMUP_ROUNDS = 1
PARTITION = PartitionSpec("fewshot", shots=32, quantity_alpha=2.0, label_alpha=10.0)
SETTINGS = ("fewshot", "fewshot_aug", "full")
PSEUDO_KEYS = ("pseudo_labels", "pseudo_label_accuracy", "pseudo_label_pool_accuracy", "pseudo_label_seconds")


@dataclass(frozen=True)
class FewshotSize:
    """Sites, rounds, the step cap per round, seeds and torch threads.  ``--shots`` is not a size: it changes the
    labelled share only, and the step cap bounds what training costs."""

    sites: int
    rounds: int
    max_steps: int
    seeds: int
    threads: int


FULL = FewshotSize(sites=3, rounds=6, max_steps=32, seeds=3, threads=2)
#: ``--smoke``: the warm-up round and one more, so the pool is pseudo-labelled and trained on; one seed; one thread,
#: as the test suite shares the machine.
SMOKE = FewshotSize(sites=2, rounds=2, max_steps=2, seeds=1, threads=1)


@dataclass(frozen=True)
class DatasetSetup:
    """Per-dataset knobs.

    Pseudo-labels are only as good as the teacher that makes them, and a bench with a weak teacher would
    measure the teacher rather than the method, so each dataset gets a backbone whose prompt is a useful
    teacher after one few-shot round.  On BBC News that is MiniLM: its warm-up prompt's predictions above
    0.7 are 96-98 % right, so each site labels its whole share and keeps those, at most 48 per class (up to
    150 per class measured no better).  On Rotten Tomatoes MiniLM's few-shot prompt is a 0.66 classifier
    whose most confident predictions are still 10-18 % wrong, and training on them gained little;
    SmolLM2-135M, asked with a "Sentiment:" template for the next word, is right 0.73-0.74 of the time
    before any training (seeds 0, 1, 3; 0.57 with seed 2's initial prompt).  A sentiment probability is
    flat near 0.5 for many reviews, so each site keeps the 48 most confident per class (0.5 on two classes
    is no threshold) of a 600-text pool (keeping 128 closed under half the gap over four seeds at 16 shots).
    BBC News articles are long, so a longer max_length and a smaller test split.  The README's few-shot
    section has the measurements behind these choices.
    """

    backbone: str
    label_words: tuple[str, ...]
    template: str
    max_length: int
    test_size: int
    threshold: float
    per_class_cap: int
    pool_cap: int


DATASETS = {
    "rotten_tomatoes": DatasetSetup(backbone="builtin:smollm2", label_words=(" negative", " positive"),
                                    template="Review: {text}\nSentiment:", max_length=64, test_size=500,
                                    threshold=0.5, per_class_cap=48, pool_cap=600),
    "bbc_news": DatasetSetup(backbone="builtin:minilm", label_words=BUILTIN["bbc_news"].label_words,
                             template="{text}", max_length=128, test_size=300, threshold=0.7, per_class_cap=48,
                             pool_cap=600),
}


def smoke_setup(setup: DatasetSetup) -> DatasetSetup:
    """``setup`` for ``--smoke``: a tiny random model of its backbone's kind (a decoder for SmolLM2, so Rotten
    Tomatoes is still scored by the next word; an encoder for MiniLM), short texts and a short test split and pool."""
    kind = "causal" if setup.backbone == "builtin:smollm2" else "encoder"
    return replace(setup, backbone=tiny_model(kind), max_length=32, test_size=20, per_class_cap=4, pool_cap=16)


def job_config(dataset: str, setup: DatasetSetup, augment: bool, seed: int, size: FewshotSize) -> JobConfig:
    """Every site in every round, ``EPOCHS`` passes over its training set per round, at most ``size.max_steps``."""
    spec = BUILTIN[dataset]
    return JobConfig(
        job=JobSection(name=f"fewshot-{dataset}", rounds=size.rounds, participants_per_round=size.sites,
                       min_participants=size.sites, round_deadline_s=3600.0, seed=seed),
        model=ModelSection(path=setup.backbone, prompt_length=16, max_length=setup.max_length),
        task=TaskSection(label_names=spec.label_names, label_words=setup.label_words, template=setup.template),
        train=TrainSection(local_epochs=EPOCHS, max_steps=size.max_steps, batch_size=BATCH, lr=0.01),
        augment=AugmentSection(enabled=augment, warmup_rounds=WARMUP_ROUNDS, threshold=setup.threshold,
                               per_class_cap=setup.per_class_cap, balance=True, max_unlabelled=setup.pool_cap),
    )


def fully_labelled(site: SiteData) -> SiteData:
    """The site as if its whole share were labelled: the upper bound the augmented run tries to reach."""
    pool = [Example(ex.text, gold) for ex, gold in zip(site.unlabelled, site.unlabelled_gold, strict=True)]
    return SiteData(site.train + pool, site.test)


def pseudo_rounds(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per round: pseudo-labels kept, their accuracy, the unfiltered pool accuracy, labelling seconds
    (each a mean over the sites that trained)."""
    return [{"round": r["round"], **{k: r.get(k) for k in PSEUDO_KEYS}} for r in report["rounds"]]


def run_dataset(dataset: str, setup: DatasetSetup, seed: int, backbone: Backbone, partition: PartitionSpec,
                size: FewshotSize) -> tuple[list[SiteData], dict[str, dict[str, Any]], dict[str, float]]:
    """The three settings on one dataset and seed: the sites, each setting's report and wall seconds."""
    train, test, names = load_split(dataset, setup.test_size, seed, BUILTIN[dataset].label_names)
    sites = split_sites(train, test, names, size.sites, partition, seed)
    runs = {
        "fewshot": (job_config(dataset, setup, False, seed, size), sites),
        "fewshot_aug": (job_config(dataset, setup, True, seed, size), sites),
        "full": (job_config(dataset, setup, False, seed, size), [fully_labelled(s) for s in sites]),
    }
    reports, seconds = {}, {}
    for setting, (config, run_sites) in runs.items():
        began = time.perf_counter()
        reports[setting] = simulate(config, run_sites, backbone)
        seconds[setting] = round(time.perf_counter() - began, 1)
        print(f"[bench fewshot] {dataset} seed {seed} {setting}: accuracy {reports[setting]['final_accuracy']:.4f} "
              f"in {seconds[setting]:.0f} s", flush=True)
    return sites, reports, seconds


def plot(details: dict[str, Any], path: Path) -> None:
    """Per dataset and round, the test accuracy of the prompt the round produced for each setting and, dashed, the
    accuracy of the pseudo-labels it trained on (means over seeds): where augmentation starts to pay, and whether
    its labels stay right while it does."""
    with saved_figure(path, len(details), (5.5 * len(details), 4)) as (_, axes):
        for ax, (dataset, d) in zip(axes, details.items()):
            for setting in SETTINGS:
                curves = [seed[setting] for seed in d["accuracy_per_round"]]
                ax.plot(range(1, len(curves[0]) + 1), [mean(c) for c in zip(*curves)], marker="o", label=setting)
            pseudo = [[p["pseudo_label_accuracy"] for p in seed] for seed in d["pseudo_label_rounds"]]
            rounds = [r for r in range(len(pseudo[0])) if all(seed[r] is not None for seed in pseudo)]
            ax.plot([r + 1 for r in rounds], [mean(seed[r] for seed in pseudo) for r in rounds], "k--", marker="x",
                    label="pseudo-label accuracy")
            ax.set_title(f"{dataset}, {len(curves)} seed(s)")
            ax.set_xlabel("round")
            ax.set_ylabel("accuracy")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)


def main(args: argparse.Namespace) -> int:
    chosen = args.dataset or list(DATASETS)
    unknown = sorted(set(chosen) - set(DATASETS))
    if unknown:
        raise ConfigError(f"--dataset: unknown {', '.join(unknown)}; choose from {', '.join(DATASETS)}")
    if args.shots < 1:
        raise ConfigError(f"--shots: must be >= 1, got {args.shots}")
    size = run_size(args, FULL, SMOKE, "seeds")
    partition = replace(PARTITION, shots=args.shots)
    torch.set_num_threads(size.threads)
    seeds = [args.seed + k for k in range(size.seeds)]
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    printed = []
    for dataset in chosen:
        setup = smoke_setup(DATASETS[dataset]) if args.smoke else DATASETS[dataset]
        backbone = load_backbone(setup.backbone)
        runs = [run_dataset(dataset, setup, seed, backbone, partition, size) for seed in seeds]
        sites, reports, _ = runs[0]
        accuracies = {k: [r[1][k]["final_accuracy"] for r in runs] for k in SETTINGS}
        secs = {k: mean(r[2][k] for r in runs) for k in SETTINGS}
        acc = {k: mean(v) for k, v in accuracies.items()}
        for setting in SETTINGS:
            sd = stdev(accuracies[setting]) if len(seeds) > 1 else 0.0
            rows.append({"dataset": dataset, "setting": setting, "accuracy": acc[setting],
                         "seconds": round(secs[setting], 1), "accuracy_sd": sd, "accuracies": accuracies[setting]})
            printed.append([dataset, setting, acc[setting], sd, mean(r[1]["fewshot"]["zero_shot_accuracy"] for r in runs),
                            reports["fewshot"]["majority_accuracy"], round(secs[setting], 1)])
        per_round = [pseudo_rounds(r[1]["fewshot_aug"]) for r in runs]
        labelling = [p["pseudo_label_seconds"] for rounds in per_round for p in rounds
                     if p["pseudo_label_seconds"] is not None]
        gap = acc["full"] - acc["fewshot"]
        details[dataset] = {
            "backbone": setup.backbone, "label_words": setup.label_words, "template": setup.template,
            "majority_accuracy": reports["fewshot"]["majority_accuracy"],
            "zero_shot_accuracy": [r[1]["fewshot"]["zero_shot_accuracy"] for r in runs],
            "labelled_per_site": [len(s.train) for s in sites],
            "unlabelled_per_site": [len(s.unlabelled) for s in sites],
            "pool_labelled_per_site": [min(setup.pool_cap, len(s.unlabelled)) for s in sites],
            "full_labelled_per_site": [len(s.train) + len(s.unlabelled) for s in sites],
            "max_length": setup.max_length, "test_size": setup.test_size,
            "threshold": setup.threshold, "per_class_cap": setup.per_class_cap, "pool_cap": setup.pool_cap,
            "accuracy_per_round": [{k: [r["accuracy"] for r in v["rounds"]] for k, v in r[1].items()} for r in runs],
            "pseudo_label_rounds": per_round,
            "gap_closed": (acc["fewshot_aug"] - acc["fewshot"]) / gap if gap > 0 else None,
            "gap_closed_per_seed": [(r[1]["fewshot_aug"]["final_accuracy"] - r[1]["fewshot"]["final_accuracy"])
                                    / g if (g := r[1]["full"]["final_accuracy"] - r[1]["fewshot"]["final_accuracy"]) > 0
                                    else None for r in runs],
            "extra_compute": {
                "labelling_seconds_per_site_round": sum(labelling) / len(labelling) if labelling else None,
                "labelling_seconds_total": sum(labelling) * size.sites / len(seeds),
                "wall_seconds_over_fewshot": round(secs["fewshot_aug"] - secs["fewshot"], 1),
                "wall_ratio_over_fewshot": round(secs["fewshot_aug"] / secs["fewshot"], 3) if secs["fewshot"] else None,
            },
        }
    out = {
        "rows": rows,
        "datasets": details,
        "settings": {"sites": size.sites, "rounds": size.rounds, "warmup_rounds": WARMUP_ROUNDS,
                     "local_epochs": EPOCHS, "max_steps": size.max_steps, "batch_size": BATCH, "partition": partition,
                     "prompt_length": 16, "seeds": seeds, "torch_threads": size.threads},
        "smoke": bool(args.smoke),
    }
    print(table(["dataset", "setting", "accuracy", "sd", "zero_shot", "majority", "seconds"], printed))
    for dataset, d in details.items():
        print(f"{dataset}: pseudo-label accuracy per round (seed {seeds[0]}) "
              f"{[None if r['pseudo_label_accuracy'] is None else round(r['pseudo_label_accuracy'], 3) for r in d['pseudo_label_rounds'][0]]}, "
              f"labelling {d['extra_compute']['labelling_seconds_total']:.0f} s per run, gap closed {d['gap_closed']}")
    report_path = Path(args.report or "reports/bench-fewshot.json")
    write_json(out, report_path)
    plot(details, report_path.with_suffix(".png"))
    print(f"[bench fewshot] report {report_path}, plot {report_path.with_suffix('.png')}")
    return 0
