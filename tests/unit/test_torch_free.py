"""Tests whose subject needs no model do not load the ML stack: the shared ``conftest`` and the unit-test modules
that need no model, imported in a fresh interpreter, leave torch and transformers out of ``sys.modules`` (the tiny
models are built by ``fedprompt.app.bench.smoke``, imported only by the fixtures that build them).

Every module of ``tests/unit`` is checked unless ``NEEDS_TORCH`` names it with the reason, so a new test module
is torch-free until someone says why it cannot be.  One interpreter imports them one after the other and checks
after each: an import only ever adds modules, so the stack is absent after every import exactly when no module
would load it on its own, and the first one that does is named (a fresh interpreter per module costs ten times
the CPU for the same verdict).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support import REPO

ML_STACK = ("torch", "transformers")

#: Unit-test modules that load torch, and why.
NEEDS_TORCH = {
    "test_bench_peft": "the peft bench module loads backbones, so it imports torch",
    "test_blackbox": "black-box learners score candidates on a tiny model",
    "test_dp": "DP-SGD on a tiny model, with Opacus's own engine as the reference",
    "test_fewshot": "pseudo-labelling with a tiny model",
    "test_generation": "generators trained, decoded and scored on a tiny causal model",
    "test_models": "the soft-prompt classifiers themselves",
    "test_peft": "LoRA and prefixes through peft on tiny models, with Opacus's per-example gradients",
    "test_participant_metrics": "a participant runtime trains one round on a tiny model",
    "test_placement": "a frozen PLM in bfloat16 on the device torch sees, trained under float32 trainables",
    "test_privacy_opacus": "Opacus, the reference accountant, imports torch",
    "test_robust_bench": "the robust bench module trains, so it imports torch",
    "test_simulation": "simulations train tiny models",
}

#: Modules the torch-free rule must cover whatever ``NEEDS_TORCH`` says: maths, crypto and the coordinator.
REQUIRED = ("test_robust", "test_gram", "test_ckks", "test_sealing", "test_payload", "test_rounds", "test_quarantine",
            "test_recovery", "test_import_contracts", "test_packaging", "test_privacy_accounting", "test_roster",
            "test_round_machine", "test_uploads", "test_accumulators")

UNIT = REPO / "tests" / "unit"
TORCH_FREE = sorted(p.stem for p in UNIT.glob("test_*.py") if p.stem not in NEEDS_TORCH)

#: argv: the watched modules (comma-separated), then the modules to import in turn.
PROBE = """
import importlib, json, sys
watched = sys.argv[1].split(",")
for module in sys.argv[2:]:
    importlib.import_module(module)
    loaded = [m for m in watched if m in sys.modules]
    if loaded:
        print(json.dumps({"module": module, "loaded": loaded}))
        break
else:
    print(json.dumps({"module": None, "loaded": []}))
"""


def probe(watched: tuple[str, ...], modules: list[str]) -> dict[str, object]:
    """The first of ``modules`` whose import (after the ones before it) loads a ``watched`` module, and which."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", PROBE, ",".join(watched), *modules], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    found: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def test_the_torch_free_list_covers_the_required_modules_and_names_only_real_ones() -> None:
    assert set(REQUIRED) <= set(TORCH_FREE)
    assert set(NEEDS_TORCH) <= {p.stem for p in UNIT.glob("test_*.py")}


def test_importing_the_modules_that_need_no_model_loads_no_ml_stack() -> None:
    """``tests.conftest`` first: pytest imports it in every session, whatever the tests."""
    found = probe(ML_STACK, ["tests.conftest", *(f"tests.unit.{m}" for m in TORCH_FREE)])
    assert found == {"module": None, "loaded": []}, f"{found['module']} loads {found['loaded']}"


def test_the_probe_names_the_first_module_that_loads_a_watched_one() -> None:
    """The check is live (shown on a cheaper stack than torch): sealing's tests load no coordinator, the round
    machine's do, and the probe names that module."""
    found = probe(("fedprompt.coordinator.rounds",), ["tests.unit.test_sealing", "tests.unit.test_rounds",
                                                      "tests.unit.test_gram"])
    assert found == {"module": "tests.unit.test_rounds", "loaded": ["fedprompt.coordinator.rounds"]}
