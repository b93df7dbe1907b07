"""A coordinator never trains: importing its server loads none of the ML stack (``.importlinter`` forbids it too)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support import REPO

ML_STACK = ("torch", "transformers", "opacus", "onnxruntime")

# Resident memory now, not ru_maxrss: Linux carries that high-water mark over exec from the forking pytest.
PROBE = f"""
import json, sys, psutil
import fedprompt.coordinator.server
print(json.dumps({{"loaded": [m for m in {ML_STACK!r} if m in sys.modules],
                   "rss_mib": psutil.Process().memory_info().rss / 2**20}}))
"""


def test_importing_the_coordinator_server_loads_no_ml_stack() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"import fedprompt.coordinator.server: RSS {found['rss_mib']:.0f} MiB")
    assert found["loaded"] == []
