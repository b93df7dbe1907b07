"""Backdoor robustness: the ``examples/backdoor.toml`` scenario under FedAvg and under every defence, one run.

Runs, all in-process on one shared backbone with the same split and seeds:

* ``no_attack`` -- the scenario with no malicious site (FedAvg): the clean-accuracy reference and the ASR
  baseline (how often the bare trigger flips a correct prediction with no backdoor trained);
* ``fedavg`` and one run per defence -- the scenario as written (2 of 10 sites, backdoor x scale);
* ``fedprompt_reproduction`` -- the FedPrompt setting: plain data poisoning (scale 1), FedAvg, IID.

Local training is memoized across runs: a site's round that starts from the same global prompt with the
same data and seed gives the same delta, so e.g. round 1 is trained once for every attacked run.

* with HE on (``he: true`` rows): FedAvg and every Gram defence (norm_bound, krum, multi_krum, foolsgold),
  deciding on the encrypted Gram matrix decrypted by two key holders (``coordinator.hegram``).  Median and
  trimmed mean need every coordinate and have no HE row.  Each HE site keeps the plaintext deltas it
  encrypted, and every round's encrypted decision is checked against the plaintext defence's decision on
  those very deltas (``he_decisions_equal_plaintext``).

``gram_seconds`` times the encrypted Gram step alone (the coordinator's computation on the ciphertexts of
10 and 20 random updates of the demo's prompt size), next to ``plain_defence_seconds``.  HE runs train
anew (their global prompts carry CKKS noise, so the memoized rounds do not match).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedprompt.app.report import table, write_json
from fedprompt.app.simulate import SimulationFile, load_simulation, simulate
from fedprompt.coordinator.aggregation import AGGREGATORS, GramDefence, make_aggregator
from fedprompt.coordinator.robust import gram
from fedprompt.crypto.ckks import PublicContext, SecretContext
from fedprompt.crypto.gram import GramEvaluator, evaluation_keys
from fedprompt.models import load_backbone
from fedprompt.participant.train import memoized, train_local

SCENARIO = Path(__file__).resolve().parents[2] / "examples" / "backdoor.toml"
DEFENCES = ("norm_bound", "median", "trimmed_mean", "krum", "multi_krum", "foolsgold")
GRAM_DEFENCES = tuple(name for name, cls in AGGREGATORS.items() if cls.gram)
HE_DEFENCES = ("fedavg", *GRAM_DEFENCES)  # rerun with HE on: FedAvg and every Gram defence
TIMING_SIZES = (10, 20)
TARGETS = {"asr": 0.10, "accuracy_drop_points": 1.0, "recall": 0.9, "precision": 0.8}


def _variant(sim: SimulationFile, aggregator: str, he: bool = False, **attack: Any) -> SimulationFile:
    job = dataclasses.replace(sim.job, job=dataclasses.replace(sim.job.job, aggregator=aggregator),
                              he=dataclasses.replace(sim.job.he, enabled=he))
    return dataclasses.replace(sim, job=job, attack=dataclasses.replace(sim.attack, **attack))


def gram_seconds(vector_size: int, sim: SimulationFile) -> dict[str, Any]:
    """Seconds of the coordinator's encrypted Gram step on ``n`` = 10 and 20 encrypted random updates, with
    the sizes an HE Gram job puts on the wire."""
    params = _variant(sim, GRAM_DEFENCES[0], he=True).job.he_params(gram_defence=True)
    secret = SecretContext.create(params)
    keys = evaluation_keys(secret)
    public = PublicContext(secret.public_bytes(), params, secret.key_id)
    evaluator = GramEvaluator(public, keys)
    rng = np.random.default_rng(0)
    uploads = [secret.encrypt(rng.normal(0, 0.01, vector_size) * 850, 0) for _ in range(max(TIMING_SIZES))]
    parsed = [public.parse(u, public.key_id, vector_size) for u in uploads]
    out: dict[str, Any] = {}
    packed = b""
    for n in TIMING_SIZES:
        began = time.perf_counter()
        packed = evaluator.gram(parsed[:n])
        out[str(n)] = time.perf_counter() - began
    sizes = {"upload_bytes": len(uploads[0]), "evaluation_key_bytes": len(keys),
             f"gram_ciphertext_bytes_{max(TIMING_SIZES)}": len(packed), "params": params.describe()}
    return {"seconds": out, "sizes": sizes}


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


def plain_defence_seconds(vector_size: int, sim: SimulationFile, repeats: int = 5) -> dict[str, float]:
    """Seconds for the plaintext decision step (Gram matrix + every Gram-based decision) at n = 10 and 20."""
    rng = np.random.default_rng(0)
    defences = [make_aggregator(name, sim.job.robust) for name in DEFENCES]
    deciders = [d for d in defences if isinstance(d, GramDefence)]
    out = {}
    for n in TIMING_SIZES:
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


def _row(defence: str, report: dict[str, Any], he: bool = False) -> dict[str, Any]:
    detection = report.get("detection") or {}
    return {"defence": defence, "he": he, "clean_accuracy": report["final_accuracy"], "asr": report.get("asr"),
            "precision": detection.get("precision"), "recall": detection.get("recall")}


def _best(rows: list[dict[str, Any]], no_attack_accuracy: float) -> dict[str, Any]:
    """The defence with the lowest ASR (ties: higher accuracy), and whether it meets each target."""
    best = min((r for r in rows if r["defence"] != "fedavg"), key=lambda r: (r["asr"], -r["clean_accuracy"]))
    drop = round(100 * (no_attack_accuracy - best["clean_accuracy"]), 9)  # accuracies step by 1/test_size
    return {"defence": best["defence"], "accuracy_drop_points": drop,
            "meets": {"asr": best["asr"] <= TARGETS["asr"], "accuracy_drop": drop <= TARGETS["accuracy_drop_points"],
                      "recall": best["recall"] is not None and best["recall"] >= TARGETS["recall"],
                      "precision": best["precision"] is not None and best["precision"] >= TARGETS["precision"]}}


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)  # shared 2-core machine: one thread wastes less than two oversubscribed ones
    sim = load_simulation(SCENARIO, {"simulation.seed": args.seed})
    backbone = load_backbone(sim.job.model.path, sim.job.model.kind)
    sites = sim.simulation.sites(sim.job.task.label_names)
    runs = {"no_attack": _variant(sim, "fedavg", malicious_fraction=0.0), "fedavg": _variant(sim, "fedavg")}
    runs |= {name: _variant(sim, name) for name in DEFENCES}
    runs["fedprompt_reproduction"] = _variant(sim, "fedavg", scale=1.0)
    trainer = memoized(train_local)  # rounds that start from the same global prompt are trained once
    runs |= {f"he_{name}": _variant(sim, name, he=True) for name in HE_DEFENCES}
    reports: dict[str, dict[str, Any]] = {}
    matches: dict[str, list[dict[str, Any]]] = {}
    for name, variant in runs.items():
        began = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="bench-robust-") as state:
            reports[name] = simulate(variant.job, sites, backbone, attack=variant.attack, trainer=trainer,
                                     state_root=Path(state) if variant.job.he.enabled else None)
            if variant.job.he.enabled and AGGREGATORS[variant.job.job.aggregator].gram:
                matches[name[3:]] = decisions_match(reports[name], Path(state), sim, name[3:])
        r = reports[name]
        print(f"[bench robust] {name}: accuracy {r['final_accuracy']:.4f}, ASR {r.get('asr')}, "
              f"{time.perf_counter() - began:.0f} s", flush=True)
    rows = [_row(name, reports[name]) for name in ("fedavg", *DEFENCES)]
    rows += [_row(name, reports[f"he_{name}"], he=True) for name in HE_DEFENCES]
    he_equal = all(m["equal"] for rounds in matches.values() for m in rounds)
    no_attack = reports["no_attack"]
    timing = gram_seconds(no_attack["exchanged_params"], sim)
    out: dict[str, Any] = {
        "rows": rows,
        "no_attack_accuracy": no_attack["final_accuracy"],
        "no_attack_asr": no_attack.get("asr"),
        "majority_accuracy": no_attack["majority_accuracy"],
        "zero_shot_accuracy": no_attack["zero_shot_accuracy"],
        "fedprompt_reproduction": {"asr_plain_poisoning": reports["fedprompt_reproduction"].get("asr"),
                                   "clean_accuracy": reports["fedprompt_reproduction"]["final_accuracy"],
                                   "asr_scaled": reports["fedavg"].get("asr"), "scale": sim.attack.scale,
                                   "aggregator": "fedavg", "partition": sim.simulation.partition},
        "plain_defence_seconds": plain_defence_seconds(no_attack["exchanged_params"], sim),
        "gram_seconds": timing["seconds"],
        "he_gram": timing["sizes"],
        "he_decisions_equal_plaintext": he_equal,
        "he_decision_rounds": matches,
        "best": _best([r for r in rows if not r["he"]], no_attack["final_accuracy"]),
        "best_he": _best([r for r in rows if r["he"]], no_attack["final_accuracy"]),
        "targets": TARGETS,
        "detection_by_round": {name: reports[name]["detection"]["rounds"] for name in (
            *DEFENCES, *(f"he_{d}" for d in GRAM_DEFENCES)) if reports[name].get("detection")},
        "settings": {"scenario": str(SCENARIO.name), "participants": sim.simulation.participants,
                     "malicious": reports["fedavg"]["malicious"], "attack": dataclasses.asdict(sim.attack),
                     "rounds": sim.job.job.rounds, "steps": sim.job.train.max_steps,
                     "test_size": sim.simulation.test_size, "max_malicious": sim.job.robust.max_malicious,
                     "backbone": sim.job.model.path, "vector_size": no_attack["exchanged_params"]},
        "seconds": {name: r["seconds"] for name, r in reports.items()},
    }
    print(table(["defence", "he", "clean_accuracy", "asr", "precision", "recall"],
                [[r["defence"], r["he"], r["clean_accuracy"], r["asr"], r["precision"], r["recall"]] for r in rows]))
    print(f"no attack: accuracy {out['no_attack_accuracy']:.4f}, ASR baseline {out['no_attack_asr']} | majority "
          f"{out['majority_accuracy']:.4f} | FedPrompt reproduction (plain poisoning, FedAvg, IID): ASR "
          f"{out['fedprompt_reproduction']['asr_plain_poisoning']} vs scaled x{sim.attack.scale:g}: "
          f"{out['fedprompt_reproduction']['asr_scaled']}")
    print(f"best defence {out['best']['defence']}: {out['best']['meets']} | best HE defence "
          f"{out['best_he']['defence']}: {out['best_he']['meets']}")
    print(f"plain defence seconds {out['plain_defence_seconds']} | encrypted Gram seconds {out['gram_seconds']} | "
          f"HE upload {out['he_gram']['upload_bytes']} B, evaluation keys {out['he_gram']['evaluation_key_bytes']} B")
    print(f"HE decisions equal the plaintext defences' on the same updates: {he_equal}")
    write_json(out, args.report or "reports/bench-robust.json")
    return 0
