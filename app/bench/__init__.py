"""``fedprompt bench NAME``: benchmarks that print a table and write a JSON report, measured in one run."""

from __future__ import annotations

import argparse
import importlib

BENCHES = {"federated": "fedprompt.app.bench.federated", "dp": "fedprompt.app.bench.dp", "fewshot": "fedprompt.app.bench.fewshot",
           "he": "fedprompt.app.bench.he", "load": "fedprompt.app.bench.load", "robust": "fedprompt.app.bench.robust",
           "blackbox": "fedprompt.app.bench.blackbox", "personal": "fedprompt.app.bench.personal",
           "stalls": "fedprompt.app.bench.stalls", "threshold": "fedprompt.app.bench.threshold",
           "simulate-scale": "fedprompt.app.bench.simulate_scale", "failover": "fedprompt.app.bench.failover",
           "peft": "fedprompt.app.bench.peft"}


def run_bench(name: str, args: argparse.Namespace) -> int:
    module = importlib.import_module(BENCHES[name])
    return int(module.main(args))
