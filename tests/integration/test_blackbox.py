"""Black-box federation with real processes: coordinator, a query-only model service, and participants that
never import torch or transformers nor hold the PLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedprompt.app.admin_client import AdminClient
from fedprompt.config import dump_toml
from tests.support import REPO, blackbox_job, fedprompt_process, stopping, toy_sites, wait_for, write_site

pytestmark = pytest.mark.slow

# Runs the real CLI entry point, then reports what the process imported and its peak memory.
PARTICIPANT = """
import json, sys
from fedprompt.app.cli import main
code = main(sys.argv[1:])
from fedprompt.participant.learner import peak_rss_mb
heavy = sorted({m.split(".")[0] for m in sys.modules}
               & {"torch", "transformers", "safetensors", "accelerate", "onnxruntime", "matplotlib", "scipy"})
print(json.dumps({"code": code, "heavy": heavy, "peak_rss_mb": peak_rss_mb()}))
"""
# A process that imports torch alone fails this (~250 MB here); the black-box participant, with numpy, grpc,
# tenseal and cma (its optional matplotlib and scipy hidden), stays near 100 MB.
RSS_LIMIT_MB = 160


def _port(path: Path, proc: subprocess.Popen[bytes], what: str) -> str:
    port = wait_for(lambda: (path.exists() and path.read_text()) or proc.poll() is not None, 120, what=what)
    assert proc.poll() is None, f"{what}: process exited"
    return f"127.0.0.1:{port}"


def test_blackbox_participants_only_query_the_model_service(tmp_path: Path, tiny_encoder_dir: Path) -> None:
    coordinator = fedprompt_process(["coordinator", "serve", "--insecure", "--listen", "127.0.0.1:0", "--state-dir",
                                     str(tmp_path / "coord"), "--port-file", str(tmp_path / "c.port")],
                                    tmp_path / "coord.log")
    service = fedprompt_process(["model", "serve", "--insecure", "--model", str(tiny_encoder_dir), "--listen",
                                 "127.0.0.1:0", "--port-file", str(tmp_path / "m.port")], tmp_path / "model.log")
    with stopping(coordinator, service):
        target = _port(tmp_path / "c.port", coordinator, "coordinator port")
        model_target = _port(tmp_path / "m.port", service, "model service port")
        admin = AdminClient(target)
        job_id = admin.create_job(dump_toml(blackbox_job(tiny_encoder_dir, rounds=2, participants_per_round=2,
                                                         min_participants=2)))
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        logs = [tmp_path / f"site-{k}.log" for k in range(2)]
        procs = [subprocess.Popen(
            [sys.executable, "-c", PARTICIPANT, "--log-level", "warning", "participant", "run", "--coordinator",
             target, "--job", job_id, "--insecure", "--name", f"site-{k}", "--data-dir",
             str(write_site(site, tmp_path / f"data-{k}")), "--model-service", model_target, "--no-progress"],
            stdout=logs[k].open("wb"), stderr=subprocess.STDOUT, env=env, cwd=REPO)
            for k, site in enumerate(toy_sites(2))]
        with stopping(*procs):
            wait_for(lambda: admin.status(job_id).participants == 2, 120, what="two joins")
            admin.start(job_id)
            wait_for(lambda: all(p.poll() is not None for p in procs), 300, interval=0.5, what="participants")
        for log in logs:
            outcome = json.loads(log.read_text().strip().splitlines()[-1])
            assert outcome["code"] == 0, log.read_text()[-2000:]
            assert outcome["heavy"] == [], "a black-box participant must not import a model runtime or plotting"
            assert outcome["peak_rss_mb"] < RSS_LIMIT_MB
        status = admin.status(job_id)
        assert status.state == "done" and status.vector_size == 13 and status.aggregator == "fedbpt"
        last = status.rounds[-1]
        assert last.metric_reports == 2 and last.metrics["model_queries"] > 0
        assert 0 < last.metrics["peak_rss_mb"] < RSS_LIMIT_MB and last.metrics["sigma"] > 0
        assert all(r.bytes_up == 2 * 4 * 13 for r in status.rounds)
        exported = admin.export(job_id, tmp_path / "state.safetensors", 2)
        admin.close()

    predict = fedprompt_process(["predict", "--prompt", str(exported), "a good film"], tmp_path / "predict.log")
    assert predict.wait(120) == 0, (tmp_path / "predict.log").read_text()[-2000:]
    answer = json.loads((tmp_path / "predict.log").read_text().strip().splitlines()[-1])
    assert answer["label"] in ("neg", "pos") and 0.5 <= answer["confidence"] <= 1.0
