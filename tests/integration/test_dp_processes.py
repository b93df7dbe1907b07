"""Record-level budgets with real participant processes: a small site exhausts its budget and declines, the
coordinator drops it from selection, and the job completes with the others."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fedprompt.app.admin_client import AdminClient
from fedprompt.config import DPSection, dump_toml
from fedprompt.participant.dp import RecordAccountant
from tests.support import LiveCoordinator, fedprompt_process, stopping, tiny_job, toy_sites, wait_for, write_site


@pytest.mark.slow
def test_budget_exhaustion_stops_one_participant_and_the_job_continues(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    # noise 1.0, batch 4, 2 steps a round, budget epsilon 3: the 8-example site (q = 0.5) spends 2.63 in round 1
    # and would reach 3.84 in round 2; the 40-example sites (q = 0.1) spend 1.54 over all three rounds.
    config = dataclasses.replace(tiny_job(tiny_encoder_dir, rounds=3, participants_per_round=3, min_participants=2),
                                 dp=DPSection(enabled=True, epsilon=3.0, noise_multiplier=1.0))
    sizes = {"big-a": 40, "big-b": 40, "small": 8}
    with LiveCoordinator(tmp_path / "coord") as coordinator:
        admin = AdminClient(coordinator.target)
        job_id = admin.create_job(dump_toml(config))
        procs = []
        for k, (name, size) in enumerate(sizes.items()):
            data = write_site(toy_sites(1, train=size, seed=10 * k)[0], tmp_path / name)
            procs.append(fedprompt_process(
                ["--log-level", "warning", "participant", "run", "--insecure", "--coordinator", coordinator.target, "--job", job_id,
                 "--name", name, "--data-dir", str(data), "--state-dir", str(tmp_path / "state" / name),
                 "--no-progress"], tmp_path / f"{name}.log"))
        with stopping(*procs):
            wait_for(lambda: admin.status(job_id).participants == 3, 120, what="three participants joined")
            admin.start(job_id)
            view = wait_for(lambda: (v := admin.status(job_id)).state in ("done", "paused", "failed") and v, 240,
                            interval=0.5, what="job finished")
            assert view.state == "done" and view.reason == "all rounds completed", view.reason
            assert [r.metrics["updates"] for r in view.rounds if r.state == "done"] == [3.0, 2.0, 2.0]
            people = {p.participant_id: p for p in admin.participants(job_id)}
            assert people["small"].state == "budget_exhausted"
            assert "record-level privacy budget" in people["small"].reason
            assert people["small"].updates_accepted == 1
            assert {people["big-a"].state, people["big-b"].state} == {"active"}
            assert people["big-a"].updates_accepted == 3
            small_eps = RecordAccountant("rdp", tmp_path / "state" / "small" / "dp" / f"{job_id}.json").epsilon(1 / 80)
            assert people["small"].record_epsilon == pytest.approx(small_eps) and 2.5 < small_eps < 3.0
            last = view.rounds[-1].metrics
            assert last["record_epsilon_max"] == pytest.approx(people["big-a"].record_epsilon)
            assert last["record_epsilon_max"] < 3.0
            wait_for(lambda: all(p.poll() is not None for p in procs), 60, what="participants exit when the job is done")
        admin.close()
    assert all(p.returncode == 0 for p in procs), [p.returncode for p in procs]
