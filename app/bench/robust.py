"""Backdoor robustness: the ``examples/backdoor.toml`` scenario under FedAvg and under every defence, over
several seeds in one run, with test sets large enough that a difference means something.

Each seed (``--seeds``, default 3; the split, the malicious sites, the prompt and the trigger's placement all
follow it) runs, in-process on one shared backbone:

* ``no_attack`` -- the scenario with no malicious site (FedAvg): the clean-accuracy reference and the ASR
  baseline (how often the bare trigger flips a correct prediction with no backdoor trained);
* ``fedavg`` and one run per defence -- the scenario as written (2 of 10 sites, backdoor x scale);
* ``fedprompt_reproduction`` -- the FedPrompt setting: plain data poisoning (scale 1), FedAvg, IID;
* with HE on (``he: true`` rows): FedAvg and every Gram defence (norm_bound, krum, multi_krum, foolsgold),
  deciding on the encrypted Gram matrix decrypted by two key holders (``coordinator.hegram``).  Median and
  trimmed mean need every coordinate and have no HE row.  Each HE site keeps the plaintext deltas it
  encrypted, and every round's encrypted decision is checked against the plaintext defence's decision on
  those very deltas (``he_decisions_equal_plaintext``).

Clean accuracy is measured on 1,000 held-out examples (the sites' test splits) and the attack success rate on
every non-target example the model gets right among those and 2,000 more held out for it alone
(``triggered_examples``, over 500 in practice), the trigger inserted into held-out texts only.  A row gives mean and sample sd over seeds, the
pooled detection precision and recall, and per seed and round who was rejected and which malicious updates
were accepted (``rejected_by_round``), so a reader sees whether a poisoned update ever got in.

Local training is memoized within a seed: a site's round that starts from the same global prompt with the
same data and seed gives the same delta, so e.g. round 1 is trained once for every attacked run.  HE runs
train anew (their global prompts carry CKKS noise, so the memoized rounds do not match).

``gram_seconds`` times the encrypted Gram step alone (the coordinator's computation on the ciphertexts of
10 and 20 random updates of the scenario's prompt size), next to ``plain_defence_seconds``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedprompt.app.bench.smoke import run_size, tiny_model
from fedprompt.app.report import saved_figure, table, write_json
from fedprompt.app.simulate import SimulationFile, load_simulation, pooled_detection, simulate
from fedprompt.coordinator.aggregation import AGGREGATORS, GramDefence, make_aggregator
from fedprompt.coordinator.robust import gram
from fedprompt.crypto.ckks import PublicContext, SecretContext
from fedprompt.crypto.gram import GramEvaluator, evaluation_keys
from fedprompt.data.datasets import Example
from fedprompt.data.shards import SiteData, load_split, split_sites
from fedprompt.models import Backbone, load_backbone
from fedprompt.participant.train import memoized, train_local

SCENARIO = Path(__file__).resolve().parents[2] / "examples" / "backdoor.toml"
DEFENCES = ("norm_bound", "median", "trimmed_mean", "krum", "multi_krum", "foolsgold")
GRAM_DEFENCES = tuple(name for name, cls in AGGREGATORS.items() if cls.gram)
HE_DEFENCES = ("fedavg", *GRAM_DEFENCES)  # rerun with HE on: FedAvg and every Gram defence
TARGETS = {"asr_over_no_attack": 0.05, "accuracy_drop_points": 1.0, "recall": 0.9, "precision": 0.8,
           "gram_seconds_20": 10.0}


@dataclass(frozen=True)
class RobustSize:
    """How big a run is: the measured one, or the smoke one (``--smoke``: a tiny random model, small held-out
    sets, one round, one seed, the Gram step timed on 7 updates alone, the fewest norm bounding and Krum decide
    on with f = 2).  The smoke run keeps the scenario's 10 sites and 5 steps: with 7 to 9 sites every run of
    the tiny model predicted one class, so no backdoor success rate was measured, and with 2 steps the
    no-attack baseline's was not.  ``test_size`` examples are dealt to the sites as their test splits (clean accuracy);
    ``asr_extra`` more are held out for the backdoor alone, whose success rate is measured on every non-target
    example of both."""

    test_size: int
    asr_extra: int
    timing: tuple[int, ...]
    seeds: int
    rounds: int | None = None  # None: the scenario's


FULL = RobustSize(test_size=1000, asr_extra=2000, timing=(10, 20), seeds=3)
SMOKE = RobustSize(test_size=60, asr_extra=40, timing=(7,), seeds=1, rounds=1)


def _variant(sim: SimulationFile, aggregator: str, he: bool = False, **attack: Any) -> SimulationFile:
    """``sim`` with ``aggregator`` and, with ``he``, single-key CKKS: an encrypted Gram defence needs evaluation
    keys, which threshold jobs do not wire yet (docs/he.md), so every HE row runs under one key alike."""
    job = dataclasses.replace(sim.job, job=dataclasses.replace(sim.job.job, aggregator=aggregator),
                              he=dataclasses.replace(sim.job.he, enabled=he, mode="single_key"))
    return dataclasses.replace(sim, job=job, attack=dataclasses.replace(sim.attack, **attack))


def gram_seconds(vector_size: int, sim: SimulationFile, sizes: tuple[int, ...]) -> dict[str, Any]:
    """Seconds of the coordinator's encrypted Gram step on ``n`` in ``sizes`` (10 and 20) encrypted random
    updates, with the sizes an HE Gram job puts on the wire."""
    params = _variant(sim, GRAM_DEFENCES[0], he=True).job.he_params(gram_defence=True)
    secret = SecretContext.create(params)
    keys = evaluation_keys(secret)
    public = PublicContext(secret.public_bytes(), params, secret.key_id)
    evaluator = GramEvaluator(public, keys)
    rng = np.random.default_rng(0)
    uploads = [secret.encrypt(rng.normal(0, 0.01, vector_size) * 850, 0) for _ in range(max(sizes))]
    parsed = [public.parse(u, public.key_id, vector_size) for u in uploads]
    out: dict[str, Any] = {}
    packed = b""
    for n in sizes:
        began = time.perf_counter()
        packed = evaluator.gram(parsed[:n])
        out[str(n)] = time.perf_counter() - began
    wire = {"upload_bytes": len(uploads[0]), "evaluation_key_bytes": len(keys),
            f"gram_ciphertext_bytes_{max(sizes)}": len(packed), "params": params.describe()}
    return {"seconds": out, "sizes": wire}


def decisions_match(report: dict[str, Any], state_root: Path, sim: SimulationFile, defence: str) -> list[dict[str, Any]]:
    """Per round of an HE run: the encrypted decision's rejections vs the plaintext defence's on the deltas
    the sites encrypted (kept in their state directories)."""
    plain = make_aggregator(defence, sim.job.robust)
    assert isinstance(plain, GramDefence)
    out = []
    for r in report["detection"]["rounds"]:
        files = sorted(state_root.glob(f"*/updates/round-{r['round']:04d}.npy"))
        names = [f.parent.parent.name for f in files]
        decision = plain.decide(gram(np.stack([np.load(f) for f in files])))
        expected = sorted(names[i] for i in decision.rejected)
        out.append({"round": r["round"], "he_rejected": sorted(r["rejected"]), "plain_rejected": expected,
                    "equal": sorted(r["rejected"]) == expected})
    return out


def plain_defence_seconds(vector_size: int, sim: SimulationFile, sizes: tuple[int, ...],
                          repeats: int = 5) -> dict[str, float]:
    """Seconds for the plaintext decision step (Gram matrix + every Gram-based decision) at ``n`` in
    ``sizes``."""
    rng = np.random.default_rng(0)
    defences = [make_aggregator(name, sim.job.robust) for name in DEFENCES]
    deciders = [d for d in defences if isinstance(d, GramDefence)]
    out = {}
    for n in sizes:
        deltas = rng.normal(0, 0.01, (n, vector_size)).astype(np.float32)
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            g = gram(deltas)
            for decider in deciders:
                decider.decide(g)
            times.append(time.perf_counter() - began)
        out[str(n)] = float(np.median(times))
    return out




def held_out(sim: SimulationFile, size: RobustSize) -> tuple[list[SiteData], list[Example]]:
    """The scenario's sites, with ``size.test_size`` held-out examples dealt as their test splits, and the
    backdoor's measuring set: every non-target example among those and ``size.asr_extra`` more held out (a
    trigger is only ever inserted into these, never into an honest site's training data)."""
    plan = sim.simulation
    train, test, names = load_split(plan.dataset, size.test_size + size.asr_extra, plan.seed, sim.job.task.label_names,
                                    plan.format)
    sites = split_sites(train, test[:size.test_size], names, plan.participants, plan.partition, plan.seed)
    target = names[sim.attack.target_index(names)]
    return sites, [ex for ex in test if ex.label != target]


def run_seed(sim: SimulationFile, size: RobustSize, backbone: Backbone,
             log: str) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    """Every run of one seed: name -> simulation report, and per HE Gram defence its rounds' comparison of
    the encrypted decision with the plaintext one."""
    sites, asr_examples = held_out(sim, size)
    runs = {"no_attack": _variant(sim, "fedavg", malicious_fraction=0.0), "fedavg": _variant(sim, "fedavg")}
    runs |= {name: _variant(sim, name) for name in DEFENCES}
    runs["fedprompt_reproduction"] = _variant(sim, "fedavg", scale=1.0)
    runs |= {f"he_{name}": _variant(sim, name, he=True) for name in HE_DEFENCES}
    trainer = memoized(train_local)  # rounds that start from the same global prompt are trained once
    reports: dict[str, dict[str, Any]] = {}
    matches: dict[str, list[dict[str, Any]]] = {}
    for name, variant in runs.items():
        began = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="bench-robust-") as state:
            reports[name] = simulate(variant.job, sites, backbone, attack=variant.attack, trainer=trainer,
                                     state_root=Path(state) if variant.job.he.enabled else None,
                                     asr_examples=asr_examples)
            if variant.job.he.enabled and AGGREGATORS[variant.job.job.aggregator].gram:
                matches[name[3:]] = decisions_match(reports[name], Path(state), sim, name[3:])
        r = reports[name]
        print(f"[bench robust] {log} {name}: accuracy {r['final_accuracy']:.4f}, ASR {r.get('asr')} on "
              f"{r.get('asr_triggered')} triggered, {time.perf_counter() - began:.0f} s", flush=True)
    return reports, matches


def _mean_sd(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of the values that exist (sd ``None`` below two of them)."""
    present = [v for v in values if v is not None]
    if not present:
        return None, None
    return statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else None


def row(defence: str, he: bool, per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """One table row over seeds: clean accuracy and ASR as mean and sd, precision and recall pooled over every
    round of every seed, the smallest triggered set any seed measured on, and who was rejected when."""
    accuracy = _mean_sd([r["final_accuracy"] for r in per_seed.values()])
    asr = _mean_sd([r.get("asr") for r in per_seed.values()])
    rounds = [{"seed": seed, **{k: v for k, v in rnd.items() if k in ("round", "rejected", "malicious",
                                                                        "accepted_malicious")}}
              for seed, r in per_seed.items() for rnd in ((r.get("detection") or {}).get("rounds") or [])]
    flags = any(r.get("detection") for r in per_seed.values())
    pooled = pooled_detection(rounds) if flags else {"precision": None, "recall": None}
    return {
        "defence": defence, "he": he,
        "clean_accuracy_mean": accuracy[0], "clean_accuracy_sd": accuracy[1], "asr_mean": asr[0], "asr_sd": asr[1],
        **pooled,
        "poisoned_updates_accepted": sum(len(x["accepted_malicious"]) for x in rounds) if flags else None,
        "triggered_examples": min(r.get("asr_triggered", 0) for r in per_seed.values()),
        "per_seed": [{"seed": seed, "clean_accuracy": r["final_accuracy"], "asr": r.get("asr"),
                      "triggered_examples": r.get("asr_triggered"), "malicious": r.get("malicious")}
                     for seed, r in per_seed.items()],
        "rejected_by_round": rounds,
    }


def meets(row: dict[str, Any], no_attack_accuracy: float, no_attack_asr: float | None) -> dict[str, bool]:
    """Which of the targets a row meets: ASR mean at most the no-attack ASR + 0.05, clean accuracy within a
    point of the no-attack run, recall and precision of its rejections."""
    drop = 100 * (no_attack_accuracy - row["clean_accuracy_mean"])
    ceiling = None if no_attack_asr is None else no_attack_asr + TARGETS["asr_over_no_attack"]
    return {"asr": ceiling is not None and row["asr_mean"] is not None and row["asr_mean"] <= ceiling,
            "accuracy_drop": drop <= TARGETS["accuracy_drop_points"],
            "recall": row["recall"] is not None and row["recall"] >= TARGETS["recall"],
            "precision": row["precision"] is not None and row["precision"] >= TARGETS["precision"]}


def best(rows: list[dict[str, Any]], no_attack_accuracy: float, no_attack_asr: float | None) -> dict[str, Any]:
    """The defence that meets the most targets (all of them, where some defence does), then the lowest mean
    ASR, then the higher accuracy; with what it meets and every defence that meets all.  The lowest ASR alone
    would crown Krum, which buys it by rejecting seven honest updates a round."""
    judged = [(r, meets(r, no_attack_accuracy, no_attack_asr)) for r in rows
              if r["defence"] != "fedavg" and r["asr_mean"] is not None]
    if not judged:
        return {"defence": None, "meets": None, "meeting_all": []}
    found, met = max(judged, key=lambda j: (sum(j[1].values()), -j[0]["asr_mean"], j[0]["clean_accuracy_mean"]))
    return {"defence": found["defence"], "accuracy_drop_points": 100 * (no_attack_accuracy - found["clean_accuracy_mean"]),
            "asr_ceiling": None if no_attack_asr is None else no_attack_asr + TARGETS["asr_over_no_attack"],
            "meets": met, "meeting_all": [r["defence"] for r, m in judged if all(m.values())]}


def plot(rows: list[dict[str, Any]], no_attack: dict[str, Any], path: Path) -> None:
    """ASR and clean accuracy per row, mean with a bar of one sd, the no-attack run drawn as a line."""
    labels = [f"{r['defence']}{' (HE)' if r['he'] else ''}" for r in rows]
    with saved_figure(path, 2, (13, 4.5)) as (fig, axes):
        for ax, key, ref, title in ((axes[0], "asr", no_attack["asr_mean"], "attack success rate"),
                                    (axes[1], "clean_accuracy", no_attack["accuracy_mean"], "clean accuracy")):
            ax.bar(range(len(rows)), [r[f"{key}_mean"] or 0.0 for r in rows],
                   yerr=[r[f"{key}_sd"] or 0.0 for r in rows], capsize=3, color="tab:blue")
            if ref is not None:
                ax.axhline(ref, color="grey", linestyle="--", label="no attack")
                ax.legend()
            ax.set_xticks(range(len(rows)), labels, rotation=45, ha="right")
            ax.set_title(title)
            ax.grid(alpha=0.3, axis="y")
        fig.suptitle("backdoor: 10 sites, 2 malicious (mean and sd over seeds)")


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)  # shared 2-core machine: one thread wastes less than two oversubscribed ones
    size = run_size(args, FULL, SMOKE, "seeds")
    seeds = list(range(args.seed, args.seed + size.seeds))
    smoke = {"model.path": tiny_model("encoder"), "job.rounds": size.rounds} if args.smoke else {}
    sims = {seed: load_simulation(SCENARIO, {"simulation.seed": seed, "job.seed": seed, "attack.seed": seed,
                                             "simulation.test_size": size.test_size, **smoke})
            for seed in seeds}
    sim = sims[seeds[0]]
    backbone = load_backbone(sim.job.model.path, sim.job.model.kind)
    reports: dict[int, dict[str, dict[str, Any]]] = {}
    matches: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for k, seed in enumerate(seeds):
        reports[seed], matches[seed] = run_seed(sims[seed], size, backbone, f"seed {seed} ({k + 1}/{len(seeds)})")
    by_run = {name: {seed: reports[seed][name] for seed in seeds} for name in reports[seeds[0]]}
    rows = [row(name, False, by_run[name]) for name in ("fedavg", *DEFENCES)]
    rows += [row(name, True, by_run[f"he_{name}"]) for name in HE_DEFENCES]
    he_equal = all(m["equal"] for per_seed in matches.values() for rounds in per_seed.values() for m in rounds)
    no_attack = row("no_attack", False, by_run["no_attack"])
    reproduction = row("fedprompt_reproduction", False, by_run["fedprompt_reproduction"])
    vector_size = reports[seeds[0]]["no_attack"]["exchanged_params"]
    timing = gram_seconds(vector_size, sim, size.timing)
    no_attack_summary = {"accuracy_mean": no_attack["clean_accuracy_mean"], "asr_mean": no_attack["asr_mean"]}
    report_path = Path(args.report or "reports/bench-robust.json")
    out: dict[str, Any] = {
        "smoke": bool(args.smoke),
        "seeds": seeds,
        "rows": rows,
        "no_attack_accuracy_mean": no_attack["clean_accuracy_mean"], "no_attack_accuracy_sd": no_attack["clean_accuracy_sd"],
        "no_attack_asr_mean": no_attack["asr_mean"], "no_attack_asr_sd": no_attack["asr_sd"],
        "no_attack": no_attack,
        "majority_accuracy": [reports[s]["no_attack"]["majority_accuracy"] for s in seeds],
        "zero_shot_accuracy": [reports[s]["no_attack"]["zero_shot_accuracy"] for s in seeds],
        "fedprompt_reproduction": {"asr_plain_poisoning_mean": reproduction["asr_mean"],
                                   "asr_plain_poisoning_sd": reproduction["asr_sd"],
                                   "clean_accuracy_mean": reproduction["clean_accuracy_mean"],
                                   "asr_scaled_mean": rows[0]["asr_mean"], "scale": sim.attack.scale,
                                   "aggregator": "fedavg", "partition": sim.simulation.partition},
        "plain_defence_seconds": plain_defence_seconds(vector_size, sim, size.timing),
        "gram_seconds": timing["seconds"],
        "he_gram": timing["sizes"],
        "he_decisions_equal_plaintext": he_equal,
        "he_decision_rounds": {str(seed): m for seed, m in matches.items()},
        "best": best([r for r in rows if not r["he"]], no_attack["clean_accuracy_mean"], no_attack["asr_mean"]),
        "best_he": best([r for r in rows if r["he"]], no_attack["clean_accuracy_mean"], no_attack["asr_mean"]),
        "targets": TARGETS,
        "gram_meets_target": timing["seconds"][str(max(size.timing))] < TARGETS["gram_seconds_20"],
        "settings": {"scenario": SCENARIO.name, "participants": sim.simulation.participants, "attack": sim.attack,
                     "rounds": sim.job.job.rounds, "steps": sim.job.train.max_steps,
                     "test_size": size.test_size, "asr_extra": size.asr_extra,
                     "partition": sim.simulation.partition,
                     "max_malicious": sim.job.robust.max_malicious, "backbone": sim.job.model.path,
                     "vector_size": vector_size, "timing_sizes": size.timing},
        "seconds": {str(seed): {name: r["seconds"] for name, r in reports[seed].items()} for seed in seeds},
        "plot": str(report_path.with_suffix(".png")),
    }
    print(table(["defence", "he", "clean_acc", "sd", "asr", "sd", "precision", "recall", "accepted", "triggered"],
                [[r["defence"], r["he"], r["clean_accuracy_mean"], r["clean_accuracy_sd"], r["asr_mean"], r["asr_sd"],
                  r["precision"], r["recall"], r["poisoned_updates_accepted"], r["triggered_examples"]]
                 for r in [*rows, no_attack]]))
    print(f"seeds {seeds} | FedPrompt reproduction (plain poisoning, FedAvg, IID): ASR "
          f"{reproduction['asr_mean']} vs scaled x{sim.attack.scale:g}: {rows[0]['asr_mean']}")
    print(f"best defence {out['best']['defence']}: {out['best']['meets']} | best HE defence "
          f"{out['best_he']['defence']}: {out['best_he']['meets']}")
    print(f"plain defence seconds {out['plain_defence_seconds']} | encrypted Gram seconds {out['gram_seconds']} | "
          f"HE upload {out['he_gram']['upload_bytes']} B, evaluation keys {out['he_gram']['evaluation_key_bytes']} B")
    print(f"HE decisions equal the plaintext defences' on the same updates: {he_equal}")
    plot(rows, no_attack_summary, report_path.with_suffix(".png"))
    write_json(out, report_path)
    return 0
