"""``fedprompt bench NAME``: benchmarks that print a table and write a JSON report, measured in one run."""

from __future__ import annotations

import argparse
import importlib

BENCHES = {"federated": "fedprompt.bench.federated", "dp": "fedprompt.bench.dp", "fewshot": "fedprompt.bench.fewshot",
           "he": "fedprompt.bench.he", "load": "fedprompt.bench.load", "robust": "fedprompt.bench.robust",
           "blackbox": "fedprompt.bench.blackbox", "personal": "fedprompt.bench.personal"}


def run_bench(name: str, args: argparse.Namespace) -> int:
    module = importlib.import_module(BENCHES[name])
    return int(module.main(args))
