"""Robust-aggregation flags over real gRPC: status shows rejections and quarantine, ListFlags shows verdicts,
ReleaseParticipant lifts a quarantine, and bad requests get their status."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from fedprompt.app.admin_client import AdminClient
from fedprompt.app.cli import build_parser
from fedprompt.config import RobustSection, dump_toml
from fedprompt.errors import NotFound, PreconditionFailed
from fedprompt.participant.grpc_link import GrpcLink
from fedprompt.protocol import Payload
from fedprompt.wire.payload import FLOAT32, encode_vector
from tests.support import LiveCoordinator, tiny_job, wait_for

SIZE = 8
NAMES = ("a", "b", "c", "d")


def cli(*argv: str) -> int:
    """Run a ``fedprompt`` command in-process without reconfiguring logging (``main`` would)."""
    args = build_parser().parse_args(list(argv))
    return int(args.fn(args))


def test_flags_quarantine_and_release_over_grpc(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tiny_job(tmp_path, rounds=2, participants_per_round=4, min_participants=3, aggregator="norm_bound")
    config = dataclasses.replace(config, robust=RobustSection(max_malicious=1, quarantine_after=1))
    with LiveCoordinator(tmp_path / "coord") as coordinator:
        admin = AdminClient(coordinator.target)
        job_id = admin.create_job(dump_toml(config))
        links = {name: GrpcLink(coordinator.target, name, give_up_after_s=5) for name in NAMES}
        try:
            for link in links.values():
                link.join(job_id, 30, 4, SIZE)
            links["a"].upload(Payload(job_id, 0, FLOAT32, SIZE, encode_vector(np.zeros(SIZE, np.float32))))
            admin.start(job_id)
            wait_for(lambda: admin.status(job_id).rounds, 10, what="round 1 to open")
            for name, link in links.items():
                vector = np.full(SIZE, 40.0 if name == "d" else 1.0, np.float32)
                link.upload(Payload(job_id, 1, FLOAT32, SIZE, encode_vector(vector), 10))
            view = wait_for(lambda: (v := admin.status(job_id)).rounds[0].state == "done" and v, 10,
                            what="round 1 to aggregate")
            assert view.rounds[0].rejected == ("d",) and view.quarantined == ("d",)

            flags = admin.flags(job_id)
            assert {(f.participant_id, f.accepted) for f in flags.flags} == {(n, n != "d") for n in NAMES}
            assert flags.quarantined == ("d",) and flags.streaks["d"] == 1
            assert all(f.defence == "norm_bound" and f.round == 1 for f in flags.flags)
            people = {p.participant_id: p.state for p in admin.participants(job_id)}
            assert people["d"] == "quarantined"
            assert cli("admin", "--insecure", "--coordinator", coordinator.target, "flags", job_id) == 0
            out = capsys.readouterr().out
            assert "REJECTED" in out and "quarantined: d" in out and "norm_over_median" in out
            assert cli("admin", "--insecure", "--coordinator", coordinator.target, "status", job_id) == 0
            out = capsys.readouterr().out
            assert "rejected" in out and "quarantined: d" in out

            with pytest.raises(PreconditionFailed, match="not quarantined"):
                admin.release(job_id, "a")
            with pytest.raises(NotFound):
                admin.release(job_id, "nobody")
            with pytest.raises(NotFound):
                admin.flags("no-such-job")
            assert cli("admin", "--insecure", "--coordinator", coordinator.target, "release", job_id, "d") == 0
            assert capsys.readouterr().out.strip() == "active"
            assert admin.status(job_id).quarantined == ()
        finally:
            for link in links.values():
                link.close()
            admin.close()
