"""A site's Prometheus metrics, fed by its real ``ParticipantRuntime`` through one round of a tiny job against an
in-process coordinator, scraped over HTTP: rounds trained, updates and bytes sent (the bytes the coordinator's own
metrics received), the last round's seconds; and the endpoint's address checked at load with its key named."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fedprompt.app.local_link import LocalLink
from fedprompt.config import ParticipantSection, dump_toml
from fedprompt.coordinator.jobs import JobManager
from fedprompt.coordinator.metrics import CoordinatorMetrics
from fedprompt.coordinator.store import Store
from fedprompt.errors import ConfigError
from fedprompt.models import build_classifier
from fedprompt.participant.metrics import ParticipantMetrics
from fedprompt.participant.runtime import ParticipantRuntime
from fedprompt.participant.train import GradientLearner
from fedprompt.protocol import TaskKind
from tests.support import tiny_job, toy_sites


def scrape(port: int) -> dict[str, float]:
    """Every unlabelled sample of ``/metrics`` by name, as a scraper parses the text format."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode("utf-8")
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_site_counts_its_round_and_bytes_as_the_coordinator_does(tiny_encoder_dir: Path) -> None:
    coordinator = CoordinatorMetrics()
    jobs = JobManager(Store(":memory:"), events=coordinator)
    job_id = jobs.create_job(dump_toml(tiny_job(tiny_encoder_dir, rounds=1, participants_per_round=2)))
    watched = ParticipantMetrics()
    port = watched.endpoint.serve("127.0.0.1:0", "participant.metrics_listen")
    try:
        runtimes = [ParticipantRuntime(LocalLink(jobs, name), site, job_id,
                                       lambda cfg: GradientLearner(build_classifier(cfg), cfg.train), events=events)
                    for name, site, events in zip(("a", "b"), toy_sites(2), (watched, None), strict=True)]
        for runtime in runtimes:
            runtime.join()
        assert scrape(port)["fedprompt_participant_rounds_trained_total"] == 0
        jobs.job(job_id).start()
        done: set[int] = set()
        while len(done) < len(runtimes):
            for k, runtime in enumerate(runtimes):
                task = runtime.link.get_task(job_id, 0)
                if task.kind is TaskKind.DONE:
                    done.add(k)
                elif task.kind is not TaskKind.WAIT:
                    runtime.handle(task)
        seen = scrape(port)
    finally:
        watched.endpoint.close()
    assert jobs.job(job_id).view().global_version == 1
    assert seen["fedprompt_participant_rounds_trained_total"] == 1
    assert seen["fedprompt_participant_updates_sent_total"] == 1
    received = coordinator.registry.get_sample_value("fedprompt_update_bytes_received_total")
    assert received is not None
    assert 0 < seen["fedprompt_participant_update_bytes_sent_total"] == received / 2  # two sites, equal sizes
    assert seen["fedprompt_participant_last_round_seconds"] > 0
    assert seen["fedprompt_participant_record_epsilon_spent"] == 0  # no DP: nothing spent, nothing set


def test_a_bad_metrics_address_is_named_at_load() -> None:
    with pytest.raises(ConfigError, match="participant.metrics_listen"):
        ParticipantSection(job="j", data_dir="d", insecure=True, metrics_listen="127.0.0.1:http").validate(
            "participant")
