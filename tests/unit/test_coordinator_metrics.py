"""The coordinator's per-job gauges, read from the job manager when collected: jobs by state, members online, and
participant-level epsilon only for jobs that account it (the same value the job's ledger reports)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from fedprompt.config import DPSection, dump_toml
from fedprompt.coordinator.jobs import JobManager
from fedprompt.coordinator.metrics import CoordinatorMetrics
from fedprompt.coordinator.store import Store
from tests.support import tiny_job


def test_gauges_follow_the_jobs_when_collected(tmp_path: Path) -> None:
    metrics = CoordinatorMetrics()
    jobs = JobManager(Store(":memory:"), events=metrics)
    metrics.watch(jobs)
    value = metrics.registry.get_sample_value
    plain = jobs.create_job(dump_toml(tiny_job(tmp_path, name="plain")))
    dp = DPSection(enabled=True, participant_noise_multiplier=1.2, participant_epsilon=10.0, participant_delta=1e-3)
    private = jobs.create_job(dump_toml(dataclasses.replace(tiny_job(tmp_path, name="private"), dp=dp)))
    assert value("fedprompt_jobs", {"state": "created"}) == 2 and value("fedprompt_jobs", {"state": "running"}) == 0
    jobs.job(plain).join("a", 30, 4, 8)
    jobs.job(plain).join("b", 30, 4, 8)
    jobs.job(plain).start()
    assert value("fedprompt_jobs", {"state": "running"}) == 1
    assert value("fedprompt_members_online", {"job_id": plain}) == 2
    assert value("fedprompt_members_online", {"job_id": private}) == 0
    assert value("fedprompt_participant_epsilon_spent", {"job_id": private}) == 0.0
    jobs.job(private).privacy.record(1, 0.5)
    spent = value("fedprompt_participant_epsilon_spent", {"job_id": private})
    assert spent is not None and spent > 0 and spent == jobs.job(private).privacy.epsilon()
    assert value("fedprompt_participant_epsilon_spent", {"job_id": plain}) is None  # no participant-level DP
