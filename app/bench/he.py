"""Encrypted aggregation costs, measured in one run on the same vectors: wire expansion, security level,
encrypt / fold / decrypt time, aggregate error, coordinator memory over 1,000 folded updates, and the wall
time of the same job's round with HE on versus off.

The micro-benchmark uses updates of the demo's prompt size (the demo model's exchanged vector) with prompt-scale
values and example-count weights; the round comparison runs the demo job (MiniLM, Rotten Tomatoes) in-process
twice, HE off then on, with the same seed, sites and backbone.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import numpy as np
import psutil

from fedprompt.app.bench.smoke import demo_bench_job, run_size
from fedprompt.app.demo import DemoOptions
from fedprompt.app.report import table, write_json
from fedprompt.app.simulate import simulate
from fedprompt.config import HESection, JobConfig
from fedprompt.crypto.ckks import PublicContext, SecretContext
from fedprompt.data.shards import PartitionSpec, load_split, split_sites
from fedprompt.models import Backbone, build_classifier

MEMORY_AT = (1, 10, 100, 250, 500, 750, 1000)  # coordinator memory is read after these many folded updates


@dataclasses.dataclass(frozen=True)
class Size:
    """How big a run is: the measured one, or ``--smoke``'s, which takes the same path in seconds."""

    updates: int  # encrypted and folded by the micro-benchmark
    sites: int
    rounds: int
    steps: int  # per site and round
    test_size: int
    threads: int


FULL = Size(updates=1000, sites=3, rounds=2, steps=4, test_size=150, threads=2)
SMOKE = Size(updates=10, sites=2, rounds=1, steps=2, test_size=40, threads=1)


def _micro(seed: int, vector_size: int, updates: int) -> dict[str, Any]:
    params = HESection(enabled=True, mode="single_key").params()
    rng = np.random.default_rng(seed)
    deltas = rng.normal(0.0, 0.02, (updates, vector_size))
    weights = rng.integers(1, 200, updates)
    secret = SecretContext.create(params)
    public = PublicContext(secret.public_bytes(), params, secret.key_id)
    began = time.perf_counter()
    uploads = [secret.encrypt(d * w, int(w)) for d, w in zip(deltas, weights, strict=True)]
    encrypt_s = (time.perf_counter() - began) / updates

    process = psutil.Process()
    total = public.new_sum(vector_size)
    rss: dict[int, int] = {}
    began = time.perf_counter()
    for k, data in enumerate(uploads, start=1):
        total.add(total.parse(data))
        if k in MEMORY_AT:
            rss[k] = process.memory_info().rss
    aggregate_s = (time.perf_counter() - began) / updates
    aggregate = total.to_bytes()

    began = time.perf_counter()
    summed, weight = secret.decrypt(aggregate, vector_size)
    decrypt_s = time.perf_counter() - began
    expected_sum = weights.astype(np.float64) @ deltas
    expected_mean = expected_sum / weights.sum()
    return {
        "plain_bytes": 4 * vector_size, "cipher_bytes": len(uploads[0]), "aggregate_bytes": len(aggregate),
        "security_bits": params.security_bits, "params": params.describe(), "encrypt_s": encrypt_s,
        "aggregate_s_per_update": aggregate_s, "decrypt_s": decrypt_s,
        "max_abs_error": float(np.abs(summed / weight - expected_mean).max()),
        "max_abs_error_of_sum": float(np.abs(summed - expected_sum).max()),
        "weight_exact": bool(weight == weights.sum()),
        "rss_bytes_after_updates": {str(k): v for k, v in rss.items()},
        "peak_memory_growth_bytes": max(rss.values()) - rss[1],
    }


def _round_seconds(report: dict[str, Any]) -> float:
    return float(np.mean([r["seconds"] for r in report["rounds"]]))


def _rounds(base: JobConfig, backbone: Backbone, seed: int, size: Size) -> dict[str, Any]:
    train, test, names = load_split("rotten_tomatoes", size.test_size, seed, base.task.label_names)
    sites = split_sites(train, test, names, size.sites, PartitionSpec("iid"), seed)
    plain = simulate(dataclasses.replace(base, he=HESection(enabled=False)), sites, backbone)
    secure = simulate(dataclasses.replace(base, he=HESection(enabled=True, mode="single_key")), sites, backbone)
    return {"plain_round_s": _round_seconds(plain), "secure_round_s": _round_seconds(secure),
            "plain_final_accuracy": plain["final_accuracy"], "secure_final_accuracy": secure["final_accuracy"],
            "plain_bytes_up_per_round": plain["rounds"][-1]["bytes_up"],
            "secure_bytes_up_per_round": secure["rounds"][-1]["bytes_up"],
            "settings": {"sites": size.sites, "rounds": size.rounds, "steps": size.steps,
                         "test_size": size.test_size, "backbone": base.model.path}}


def main(args: argparse.Namespace) -> int:
    size = run_size(args, FULL, SMOKE)
    base, backbone = demo_bench_job(args, DemoOptions(participants=size.sites, rounds=size.rounds, steps=size.steps,
                                                      seed=args.seed, dp=False), size.threads)
    vector_size = build_classifier(base, backbone).vector_size
    micro = _micro(args.seed, vector_size, size.updates)
    print(f"[bench he] {size.updates} updates of {vector_size} floats encrypted and folded", flush=True)
    rounds = _rounds(base, backbone, args.seed, size)
    out = {
        "plain_bytes": micro["plain_bytes"],
        "cipher_bytes": micro["cipher_bytes"],
        "expansion_ratio": micro["cipher_bytes"] / micro["plain_bytes"],
        "security_bits": micro["security_bits"],
        "encrypt_s": micro["encrypt_s"],
        "aggregate_s_per_update": micro["aggregate_s_per_update"],
        "decrypt_s": micro["decrypt_s"],
        "max_abs_error": micro["max_abs_error"],
        "secure_round_over_plain_round": rounds["secure_round_s"] / rounds["plain_round_s"],
        "aggregation_1000": {"updates": size.updates, **{k: micro[k] for k in (
            "aggregate_bytes", "max_abs_error_of_sum", "weight_exact", "rss_bytes_after_updates",
            "peak_memory_growth_bytes")}},  # the key keeps its name in a smoke run, which folds fewer
        "he_params": micro["params"],
        "rounds": rounds,
        "smoke": bool(args.smoke),
    }
    rows = [[k, out[k]] for k in ("plain_bytes", "cipher_bytes", "expansion_ratio", "security_bits", "encrypt_s",
                                  "aggregate_s_per_update", "decrypt_s", "max_abs_error",
                                  "secure_round_over_plain_round")]
    rows += [["aggregate_bytes (download)", micro["aggregate_bytes"]],
             [f"peak_memory_growth_bytes ({size.updates:,} updates)", micro["peak_memory_growth_bytes"]],
             ["plain_round_s", rounds["plain_round_s"]], ["secure_round_s", rounds["secure_round_s"]]]
    print(table(["measure", "value"], rows))
    print(f"targets: expansion <= 8 ({out['expansion_ratio']:.2f}), security >= 128 ({out['security_bits']}), "
          f"error <= 1e-4 ({out['max_abs_error']:.2e}), secure/plain round <= 1.25 "
          f"({out['secure_round_over_plain_round']:.3f}), memory growth flat "
          f"({micro['peak_memory_growth_bytes'] / 1e6:.1f} MB over {size.updates} updates)")
    write_json(out, args.report or "reports/bench-he.json")
    return 0
