"""The coordinator's Prometheus endpoint, scraped over HTTP from a live coordinator while a round runs and after it:
rounds completed, updates accepted and rejected (by reason), bytes in and out, jobs by state, members online."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fedprompt.app.admin_client import AdminClient
from fedprompt.config import dump_toml
from fedprompt.errors import ConfigError, InvalidUpdate
from fedprompt.participant.grpc_link import GrpcLink
from fedprompt.protocol import Payload
from fedprompt.wire.payload import FLOAT32, encode_vector
from tests.support import LiveCoordinator, tiny_job

SIZE = 8
MEMBERS = ("a", "b", "c")


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics`` by name and sorted labels, as a scraper parses the text format."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode("utf-8")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def update(job_id: str, value: float, size: int = SIZE) -> Payload:
    return Payload(job_id, 1, FLOAT32, size, encode_vector(np.full(size, value, np.float32)), 10)


def test_metrics_scraped_during_and_after_a_round(tmp_path: Path) -> None:
    with LiveCoordinator(tmp_path / "coord", metrics_listen="127.0.0.1:0") as live:
        port = live.server.metrics_port
        assert port > 0
        admin = AdminClient(live.target)
        job_id = admin.create_job(dump_toml(tiny_job(tmp_path, rounds=1, participants_per_round=3,
                                                     min_participants=3, round_deadline_s=600.0)))
        links = {name: GrpcLink(live.target, name, give_up_after_s=5) for name in MEMBERS}
        for link in links.values():
            link.join(job_id, 30, 4, SIZE)
        links["a"].upload(Payload(job_id, 0, FLOAT32, SIZE, encode_vector(np.zeros(SIZE, np.float32))))
        before = scrape(port)
        assert before[("fedprompt_jobs", (("state", "created"),))] == 1
        assert before[("fedprompt_members_online", (("job_id", job_id),))] == 3
        admin.start(job_id)
        served = len(links["a"].download(job_id, 0).data)
        with pytest.raises(InvalidUpdate):
            links["a"].upload(update(job_id, 1.0, SIZE + 3))
        sent = [update(job_id, 1.0), update(job_id, 2.0)]
        links["a"].upload(sent[0])
        links["b"].upload(sent[1])
        during = scrape(port)
        assert during[("fedprompt_jobs", (("state", "running"),))] == 1
        assert during[("fedprompt_updates_accepted_total", (("job_id", job_id),))] == 2
        assert during[("fedprompt_updates_rejected_total", (("reason", "InvalidUpdate"),))] == 1
        assert during[("fedprompt_update_bytes_received_total", ())] == sum(len(p.data) for p in sent)
        assert during[("fedprompt_global_bytes_sent_total", ())] == served
        assert ("fedprompt_rounds_completed_total", (("job_id", job_id),)) not in during
        links["c"].upload(update(job_id, 3.0))
        assert admin.status(job_id).state == "done"
        after = scrape(port)
        assert after[("fedprompt_rounds_completed_total", (("job_id", job_id),))] == 1
        assert after[("fedprompt_updates_accepted_total", (("job_id", job_id),))] == 3
        assert after[("fedprompt_update_bytes_received_total", ())] == 3 * len(sent[0].data)
        assert after[("fedprompt_round_duration_seconds_count", ())] == 1
        assert after[("fedprompt_jobs", (("state", "done"),))] == 1
        assert after[("fedprompt_jobs", (("state", "running"),))] == 0
        assert ("fedprompt_rounds_failed_total", (("job_id", job_id),)) not in after
        for link in links.values():
            link.close()
        admin.close()
    with pytest.raises(OSError):
        scrape(port)  # stopped with the coordinator


def test_metrics_off_by_default_and_a_bad_address_named(tmp_path: Path) -> None:
    with LiveCoordinator(tmp_path / "coord") as live:
        assert live.server.metrics_port == 0
    with pytest.raises(ConfigError, match="coordinator.metrics_listen"):
        LiveCoordinator(tmp_path / "other", metrics_listen="localhost").settings.validate("coordinator")
