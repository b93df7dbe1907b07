"""A real coordinator process and three participant processes over real gRPC on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedprompt.app.admin_client import AdminClient, load_prompt
from fedprompt.config import dump_toml
from tests.support import fedprompt_process, stopping, tiny_job, toy_sites, wait_for, write_site

pytestmark = pytest.mark.slow


def test_three_participants_two_rounds_aggregate_is_weighted_mean(tmp_path: Path, tiny_encoder_dir: Path) -> None:
    port_file = tmp_path / "port"
    coordinator = fedprompt_process(["coordinator", "serve", "--insecure", "--listen", "127.0.0.1:0", "--state-dir",
                                     str(tmp_path / "coord"), "--port-file", str(port_file)], tmp_path / "coord.log")
    with stopping(coordinator):
        port = wait_for(lambda: port_file.exists() and port_file.read_text(), 60, what="coordinator port")
        target = f"127.0.0.1:{port}"
        admin = AdminClient(target)
        job_id = admin.create_job(dump_toml(tiny_job(tiny_encoder_dir, rounds=2)))
        sites = toy_sites(3, train=12)
        procs = [fedprompt_process(["participant", "run", "--insecure", "--coordinator", target, "--job", job_id, "--name",
                                    f"site-{k}", "--data-dir", str(write_site(site, tmp_path / f"data-{k}")),
                                    "--state-dir", str(tmp_path / f"state-{k}"), "--no-progress"],
                                   tmp_path / f"site-{k}.log") for k, site in enumerate(sites)]
        with stopping(*procs):
            wait_for(lambda: admin.status(job_id).participants == 3, 120, what="three joins")
            admin.start(job_id)
            wait_for(lambda: all(p.poll() is not None for p in procs), 300, interval=0.5, what="participants to finish")
        assert [p.returncode for p in procs] == [0, 0, 0], (tmp_path / "site-0.log").read_text()[-2000:]
        status = admin.status(job_id)
        assert status.state == "done" and [r.round for r in status.rounds] == [1, 2]
        assert all(r.metric_reports == 3 for r in status.rounds)

        globals_ = {v: load_prompt(admin.export(job_id, tmp_path / f"v{v}.safetensors", v))[0] for v in (1, 2)}
        weights = [len(site.train) for site in sites]
        deltas = [np.load(tmp_path / f"state-{k}" / "updates" / "round-0002.npy") for k in range(3)]
        expected = globals_[1] + sum(w * d for w, d in zip(weights, deltas)) / sum(weights)
        np.testing.assert_allclose(globals_[2], expected, atol=1e-6)

        people = admin.participants(job_id)
        assert sorted(p.participant_id for p in people) == ["site-0", "site-1", "site-2"]
        assert all(p.updates_accepted == 2 for p in people)
        admin.close()

    predict = fedprompt_process(["predict", "--prompt", str(tmp_path / "v2.safetensors"), "a good film"],
                                tmp_path / "predict.log")
    assert predict.wait(120) == 0
    answer = json.loads((tmp_path / "predict.log").read_text().strip().splitlines()[-1])
    assert answer["label"] in ("neg", "pos") and 0.5 <= answer["confidence"] <= 1.0
