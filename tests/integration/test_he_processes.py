"""End to end with HE: a real coordinator process and three participant processes.

Checks that the decrypted aggregate equals the plaintext example-weighted mean of the updates the sites
actually sent (their audit trail), and that the coordinator's SQLite files and log hold no plaintext update,
no decrypted global prompt and no secret key material.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from fedprompt.app.admin_client import AdminClient
from fedprompt.config import HESection, JobConfig, RobustSection, dump_toml
from fedprompt.coordinator.store import Store
from fedprompt.crypto.ckks import SecretContext, _saved
from fedprompt.data.shards import load_site
from fedprompt.participant.keys import SECRET_FILE, key_dir
from tests.support import fedprompt_process, stopping, tiny_job, toy_sites, wait_for, write_site

SITES = 3
ROUNDS = 2


def windows(data: bytes, width: int, count: int = 12) -> list[bytes]:
    """``count`` slices of ``width`` bytes spread over ``data``."""
    step = max(1, (len(data) - width) // count)
    return [data[i : i + width] for i in range(0, len(data) - width + 1, step)][:count]


def text_forms(vector: np.ndarray, count: int = 20) -> list[str]:
    """How values would look if they were logged: 7-decimal renderings of the clearly non-zero ones."""
    values = [float(v) for v in vector if abs(v) > 1e-3][:count]
    return [f"{v:.7f}" for v in values] + [repr(v) for v in values]


def run_job(tmp_path: Path, config: JobConfig) -> tuple[list[Path], str]:
    """A coordinator process (state in ``coord/``, log in ``coordinator.log``) and ``SITES`` participant
    processes run ``config`` to the end; returns the sites' data directories and the job id."""
    sites = [write_site(s, tmp_path / f"data-{k}") for k, s in enumerate(toy_sites(SITES))]
    port_file = tmp_path / "port"
    coordinator_log = tmp_path / "coordinator.log"
    state = tmp_path / "coord"
    coordinator = fedprompt_process(["coordinator", "serve", "--insecure", "--listen", "127.0.0.1:0", "--state-dir",
                                     str(state), "--port-file", str(port_file)], coordinator_log)
    with stopping(coordinator):
        wait_for(lambda: port_file.exists() and port_file.read_text().strip(), 60, what="coordinator port")
        target = f"127.0.0.1:{port_file.read_text().strip()}"
        admin = AdminClient(target)
        job_id = admin.create_job(dump_toml(config))
        procs = [fedprompt_process(["participant", "run", "--insecure", "--coordinator", target, "--job", job_id, "--name",
                                    f"site-{k}", "--data-dir", str(site), "--state-dir", str(tmp_path / f"state-{k}"),
                                    "--threads", "1", "--no-progress"], tmp_path / f"site-{k}.log")
                 for k, site in enumerate(sites)]
        with stopping(*procs):
            admin.start(job_id)
            wait_for(lambda: admin.status(job_id).state == "done", 300, interval=0.5, what="job done")
            wait_for(lambda: all(p.poll() is not None for p in procs), 60, what="participants exit")
        admin.close()
    assert all(p.returncode == 0 for p in procs)
    return sites, job_id


@pytest.mark.slow
def test_encrypted_job_across_processes(tmp_path: Path, tiny_encoder_dir: Path) -> None:
    config = dataclasses.replace(tiny_job(tiny_encoder_dir, rounds=ROUNDS, participants_per_round=SITES,
                                          min_participants=SITES), he=HESection(enabled=True, mode="single_key"))
    sites, job_id = run_job(tmp_path, config)
    state, coordinator_log = tmp_path / "coord", tmp_path / "coordinator.log"
    weights = [len(load_site(site).train) for site in sites]
    globals_ = [[np.load(tmp_path / f"state-{k}" / "globals" / f"version-{v:04d}.npy") for v in range(ROUNDS + 1)]
                for k in range(SITES)]
    for k in range(1, SITES):  # every key holder rebuilds the same global prompt
        assert all(np.array_equal(a, b) for a, b in zip(globals_[0], globals_[k], strict=True))
    deltas = {(k, r): np.load(tmp_path / f"state-{k}" / "updates" / f"round-{r:04d}.npy")
              for k in range(SITES) for r in range(1, ROUNDS + 1)}
    for r in range(1, ROUNDS + 1):
        mean = sum(w * deltas[k, r].astype(np.float64) for k, w in enumerate(weights)) / sum(weights)
        assert np.abs((globals_[0][r] - globals_[0][r - 1]) - mean).max() < 1e-4

    stored = b"".join(p.read_bytes() for p in sorted(state.glob("coordinator.sqlite*")))
    log_text = coordinator_log.read_text(encoding="utf-8", errors="replace")
    plaintexts = [d.astype("<f4") for d in deltas.values()] + [g.astype("<f4") for g in globals_[0]]
    for vector in plaintexts:
        for raw in (vector.tobytes(), vector.astype("<f8").tobytes()):
            for window in windows(raw, 16):
                assert window not in stored
        for text in text_forms(vector):
            assert text not in log_text
    secret_file = (key_dir(tmp_path / "state-0", job_id) / SECRET_FILE).read_bytes()
    secret = SecretContext.from_secret_bytes(secret_file, config.he.params())
    for material in (secret_file, _saved(secret.secret_key.save)):
        for window in windows(material[64:], 32):
            assert window not in stored
            assert window.hex() not in log_text
    assert "encrypted aggregation" in log_text and "security_bits=192" in log_text


@pytest.mark.slow
def test_encrypted_gram_defence_across_processes(tmp_path: Path, tiny_encoder_dir: Path) -> None:
    """The Gram step on the server's worker thread, with daemons that poll for their DECRYPT tasks: every
    round is decided on an agreed Gram matrix, one decision per update."""
    config = dataclasses.replace(
        tiny_job(tiny_encoder_dir, rounds=ROUNDS, participants_per_round=SITES, min_participants=SITES,
                 aggregator="norm_bound"), he=HESection(enabled=True, mode="single_key"), robust=RobustSection(max_malicious=1))
    _, job_id = run_job(tmp_path, config)
    log_text = (tmp_path / "coordinator.log").read_text(encoding="utf-8", errors="replace")
    assert log_text.count("encrypted Gram matrix computed") == ROUNDS
    store = Store(tmp_path / "coord" / "coordinator.sqlite")
    decisions = store.decisions(job_id)
    assert sorted((d.round, d.participant_id) for d in decisions) == sorted(
        (r, f"site-{k}") for r in range(1, ROUNDS + 1) for k in range(SITES))
    assert all(r.state == "done" for r in store.rounds(job_id))
    store.close()
