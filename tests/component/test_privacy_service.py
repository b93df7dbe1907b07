"""ReportPrivacy on a real socket: bad reports get INVALID_ARGUMENT / FAILED_PRECONDITION and change nothing;
a decline drops the caller from selection, visible to the admin with its reason."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from fedprompt.app.admin_client import AdminClient
from fedprompt.config import DPSection, dump_toml
from fedprompt.errors import InvalidUpdate, PreconditionFailed
from fedprompt.participant.grpc_link import GrpcLink
from fedprompt.protocol import Payload, PrivacyReport
from fedprompt.wire.payload import FLOAT32, encode_vector
from tests.support import LiveCoordinator, tiny_job

SIZE = 8


def test_report_privacy_over_grpc(tmp_path: Path) -> None:
    config = dataclasses.replace(tiny_job(tmp_path, rounds=2, participants_per_round=3, min_participants=2),
                                 dp=DPSection(enabled=True))
    with LiveCoordinator(tmp_path / "coord") as coordinator:
        admin = AdminClient(coordinator.target)
        job_id = admin.create_job(dump_toml(config))
        links = {name: GrpcLink(coordinator.target, name, give_up_after_s=5) for name in ("a", "b", "c")}
        try:
            for link in links.values():
                link.join(job_id, 30, 4, SIZE)
            links["a"].upload(Payload(job_id, 0, FLOAT32, SIZE, encode_vector(np.zeros(SIZE, np.float32))))
            admin.start(job_id)
            with pytest.raises(InvalidUpdate, match="epsilon must be finite"):
                links["a"].report_privacy(PrivacyReport(job_id, 1, math.inf, 1e-3))
            with pytest.raises(InvalidUpdate, match="delta"):
                links["a"].report_privacy(PrivacyReport(job_id, 1, 1.0, 1.5))
            with pytest.raises(PreconditionFailed, match="round 5"):
                links["a"].report_privacy(PrivacyReport(job_id, 5, 1.0, 1e-3))
            assert all(p.reason == "" and p.record_epsilon == 0 for p in admin.participants(job_id))

            links["c"].report_privacy(PrivacyReport(job_id, 1, 2.9, 1e-3, True, "record-level privacy budget spent"))
            for name in ("a", "b"):
                links[name].report_privacy(PrivacyReport(job_id, 1, 1.25, 1e-3))
                links[name].upload(Payload(job_id, 1, FLOAT32, SIZE, encode_vector(np.ones(SIZE, np.float32)), 10))
            people = {p.participant_id: p for p in admin.participants(job_id)}
            assert (people["c"].state, people["c"].reason) == ("budget_exhausted", "record-level privacy budget spent")
            assert people["a"].record_epsilon == 1.25
            status = admin.status(job_id)
            assert status.global_version == 1 and status.rounds[0].selected == ("a", "b")
            assert status.rounds[0].metrics["record_epsilon_max"] == 1.25
        finally:
            for link in links.values():
                link.close()
            admin.close()
