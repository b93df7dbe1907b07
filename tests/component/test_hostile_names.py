"""Hostile job names and ids against real servers (issue 28): a live mTLS coordinator whose one job cannot write
its checkpoint (a real file system refusal) keeps handling every other job's deadlines; participants over real
sockets refuse a job id that could name a file outside their state directory before they write anything.

The property over generated names (nothing is written outside the coordinator's state directory) is in
``tests/component/test_fuzz.py``; the same failures driven directly are in ``tests/unit/test_job_isolation.py``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from fedprompt.app.admin_client import AdminClient
from fedprompt.app.local_link import LocalLink
from fedprompt.config import JobConfig, dump_toml
from fedprompt.coordinator.jobs import JobManager
from fedprompt.coordinator.store import Store
from fedprompt.errors import InvalidRequest
from fedprompt.participant.grpc_link import GrpcLink
from fedprompt.participant.keys import key_dir
from fedprompt.participant.learner import Learner
from fedprompt.participant.runtime import ParticipantRuntime
from fedprompt.protocol import JoinInfo, Payload
from fedprompt.wire.payload import FLOAT32, encode_vector
from tests.support import LiveCoordinator, ThrowawayPki, tiny_job, toy_sites, wait_for

SIZE = 8
MEMBERS = ("participant:a", "participant:b")


def tree(root: Path, skip: Path | None = None) -> set[str]:
    """Every path under ``root`` (those under ``skip`` aside), relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if skip is None or not p.is_relative_to(skip)}


def initial(job_id: str) -> Payload:
    return Payload(job_id, 0, FLOAT32, SIZE, encode_vector(np.zeros(SIZE, np.float32)))


def test_a_job_whose_checkpoint_cannot_be_written_is_paused_and_the_canarys_deadline_is_still_handled(
        tmp_path: Path) -> None:
    pki = ThrowawayPki(tmp_path / "pki")
    state = tmp_path / "state"
    with LiveCoordinator(state, pki) as live:
        admin = AdminClient(live.target, pki.tls("admin:alice"))
        links = {who: GrpcLink(live.target, tls=pki.tls(who), give_up_after_s=5) for who in MEMBERS}

        def job(name: str, deadline_s: float) -> str:
            job_id = admin.create_job(dump_toml(tiny_job(tmp_path, name=name, rounds=1, participants_per_round=2,
                                                         min_participants=2, round_deadline_s=deadline_s,
                                                         allowed_participants=MEMBERS)))
            admin.start(job_id)
            return job_id

        canary = job("canary", 3.0)
        for link in links.values():
            link.join(canary, 30, 4, SIZE)
        links["participant:a"].upload(initial(canary))
        wait_for(lambda: admin.status(canary).rounds, 10, what="the canary's round 1 opened")
        broken = job("broken", 600.0)
        # The one file system write that fails: a directory where this job's checkpoint file goes.
        (state / "checkpoints" / f"{broken}.safetensors").mkdir(parents=True)
        for link in links.values():
            link.join(broken, 30, 4, SIZE)
        links["participant:a"].upload(initial(broken))  # version 0: the ticker's next checkpoint step fails
        paused = wait_for(lambda: (v := admin.status(broken)).state == "paused" and v, 10, what="broken paused")
        assert paused.reason.startswith("checkpoint step failed: IsADirectoryError")
        assert admin.status(canary).rounds[0].state == "training"  # its deadline is still ahead
        # Nobody reports to the canary: at its deadline the attempt fails and the next one opens.
        rounds = wait_for(lambda: len(r := admin.status(canary).rounds) == 2 and r, 10, what="canary deadline handled")
        assert [(r.attempt, r.state) for r in rounds] == [(1, "failed"), (2, "training")]
        assert admin.status(canary).state == "running" and (state / "checkpoints" / f"{canary}.safetensors").is_file()
        assert links["participant:b"].heartbeat(broken, 5) == "paused"
        admin.start(broken)  # an admin may start it again: the disk still refuses, so it is paused again
        wait_for(lambda: admin.status(broken).state == "paused", 10, what="broken paused again")
        for link in links.values():
            link.close()
        admin.close()
    # The stop wrote the last checkpoints (the refused one refused again) and ended without a traceback.
    assert {p.name for p in (state / "checkpoints").iterdir()} == {f"{canary}.safetensors", f"{broken}.safetensors"}


def legacy_store(state: Path, jobs: dict[str, str], config: JobConfig) -> None:
    """A coordinator store holding jobs ``id -> name`` (a store from before ids were opaque, or one a hostile
    coordinator wrote: the ids a participant is told are whatever the coordinator says)."""
    store = Store(state / "coordinator.sqlite")
    for job_id, name in jobs.items():
        store.add_job(job_id, name, dump_toml(dataclasses.replace(config, job=dataclasses.replace(config.job, name=name))),
                      "created")
    store.close()


def never_built(config: JobConfig) -> Learner:
    raise AssertionError("a refused job builds no learner")


def test_a_participant_refuses_a_job_id_with_path_characters_before_writing_anything(tmp_path: Path) -> None:
    pki = ThrowawayPki(tmp_path / "pki")
    state = tmp_path / "state"
    outside = tmp_path / "outside"
    hostile = {"../../escape/dotdot-1a2b3c4d": "dotdot", f"{outside}/absolute": "absolute", "a/b": "separator",
               "..": "parent", "nul\x00byte": "nul", "line\nbreak": "newline", "é" * 150: "long",
               ".hidden": "hidden"}
    legacy_store(state, hostile, tiny_job(tmp_path))
    site = toy_sites(1)[0]
    tls = pki.tls("participant:a")
    with LiveCoordinator(state, pki) as live:
        before = tree(tmp_path, state)
        link = GrpcLink(live.target, tls=tls, give_up_after_s=5)
        for name in hostile.values():  # asked for by name: the id is what the coordinator answers
            runtime = ParticipantRuntime(link, site, name, never_built, state_dir=tmp_path / "site" / name)
            with pytest.raises(InvalidRequest, match="job id from the coordinator: job id .* is not a safe file name"):
                runtime.join()
            assert runtime.info is None
        link.close()
        assert tree(tmp_path, state) == before  # no site directory, nothing outside


class AnswersForAnotherJob(LocalLink):
    """The real coordinator's domain behind a door that answers a join for a job id of its choosing."""

    def __init__(self, jobs: JobManager, identity: str, answer: str) -> None:
        super().__init__(jobs, identity)
        self.answer = answer

    def join(self, job: str, num_train: int, num_test: int, vector_size: int,
             exchange_public_key: bytes = b"", exchange_attestation: bytes = b"") -> JoinInfo:
        info = super().join(job, num_train, num_test, vector_size, exchange_public_key, exchange_attestation)
        return dataclasses.replace(info, job_id=self.answer)


class Untrained:
    """The part of a ``Learner`` a join uses (its vector's size), for a site that is refused before any training."""

    vector_size = SIZE

    def initial_vector(self) -> np.ndarray:
        return np.zeros(SIZE, np.float32)


@pytest.mark.parametrize("answer", ["../../escape/dotdot", "job-0000000000000000"])
def test_a_participant_refuses_a_join_answered_for_another_job_id(tmp_path: Path, answer: str) -> None:
    jobs = JobManager(Store(tmp_path / "coordinator.sqlite"))
    job_id = jobs.create_job(dump_toml(tiny_job(tmp_path)))
    site_dir = tmp_path / "site"
    runtime = ParticipantRuntime(AnswersForAnotherJob(jobs, "a", answer), toy_sites(1)[0], job_id,
                                 lambda config: Untrained(), state_dir=site_dir)  # type: ignore[arg-type, return-value]
    with pytest.raises(InvalidRequest, match=f"asked to join job '{job_id}', answered for job"):
        runtime.join()
    assert runtime.info is None and not site_dir.exists()
    jobs.store.close()


@pytest.mark.parametrize("job_id", ["../../escape", "/tmp/absolute", "a/b", "..", "é" * 150])
def test_a_sites_key_directory_is_never_named_after_an_unsafe_job_id(tmp_path: Path, job_id: str) -> None:
    """Defence in depth behind the check at join: the path builders check the id too."""
    with pytest.raises(InvalidRequest, match="job keys: job id"):
        key_dir(tmp_path, job_id)
