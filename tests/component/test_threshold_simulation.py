"""Threshold-CKKS jobs (``he.mode = "threshold"``) in the in-process simulation (``LocalLink``): the members set
their key up through the coordinator's relay, upload seeded ciphertexts for each round attempt, t of them make
decryption shares sealed for the members, and every member combines the global itself.  Real SEAL ciphertexts,
the real coordinator and participant code; no network."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedprompt.app.local_link import LocalLink
from fedprompt.app.simulate import simulate
from fedprompt.config import HESection, JobConfig, dump_toml
from fedprompt.coordinator.jobs import JobManager
from fedprompt.coordinator.rounds import RoundState
from fedprompt.coordinator.store import Store
from fedprompt.errors import NotSelected, PreconditionFailed, RelayRefused, StaleRound
from fedprompt.models import load_backbone
from fedprompt.participant.learners import local_learner
from fedprompt.participant.runtime import ParticipantRuntime
from fedprompt.protocol import TaskKind
from fedprompt.wire.threshold import ENCODING, unpack_version
from tests.support import tiny_job, toy_sites


def _he(config: JobConfig, mode: str) -> JobConfig:
    return dataclasses.replace(config, he=HESection(enabled=True, mode=mode))


def test_a_threshold_job_follows_the_single_key_trajectory(tiny_encoder_dir: Path) -> None:
    """Same sites, seeds and rounds under single-key and threshold keys: every round's evaluation (each site
    on the global it combined itself) matches to CKKS precision."""
    base = tiny_job(tiny_encoder_dir, rounds=2)
    single, threshold = (simulate(_he(base, mode), toy_sites()) for mode in ("single_key", "threshold"))
    assert threshold["state"] == single["state"] == "done"
    assert [r["accuracy"] for r in threshold["rounds"]] == [r["accuracy"] for r in single["rounds"]]
    for a, b in zip(threshold["rounds"], single["rounds"], strict=True):
        assert a["updates"] == 3 and a["metric_reports"] == 3
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


class Federation:
    """Three sites driven one call at a time on a clock the test moves, so a member can drop mid-round."""

    def __init__(self, model_dir: Path, state_root: Path) -> None:
        self.now = 1000.0
        self.jobs = JobManager(Store(":memory:"), clock=lambda: self.now, offline_after_s=90.0)
        names = [f"site-{k}" for k in range(3)]
        config = _he(tiny_job(model_dir, rounds=2, round_deadline_s=60.0), "threshold")
        config = dataclasses.replace(config, job=dataclasses.replace(config.job, allowed_participants=tuple(names)))
        self.job_id = self.jobs.create_job(dump_toml(config))
        self.job = self.jobs.job(self.job_id)
        backbone = load_backbone(str(model_dir))
        self.sites = {name: ParticipantRuntime(LocalLink(self.jobs, name), site, self.job_id,
                                               lambda cfg: local_learner(cfg, backbone), state_dir=state_root / name)
                      for name, site in zip(names, toy_sites(), strict=True)}
        for site in self.sites.values():
            site.join()
        self.job.start()
        self.dropped: set[str] = set()
        self.refusals: list[tuple[str, str]] = []

    def step(self) -> bool:
        """One pass over the sites still up; True if any did work."""
        worked = False
        for name, site in self.sites.items():
            if name in self.dropped:
                continue
            site.service_keys()
            task = site.link.get_task(self.job_id, 0)
            if task.kind not in (TaskKind.WAIT, TaskKind.DONE):
                try:
                    site.handle(task)
                except RelayRefused as exc:  # reported by the member (the job pauses); the daemon's loop goes on
                    self.refusals.append((name, str(exc)))
                worked = True
        return worked

    def run_until(self, done: Callable[[], bool], passes: int = 60) -> None:
        for _ in range(passes):
            if done():
                return
            if not self.step():
                self.now += 61.0  # nothing to do: let a deadline pass (members up are seen every pass)
        assert done()


def test_a_decryptor_dropped_after_uploading_holds_the_round_until_it_is_back(tiny_encoder_dir: Path,
                                                                             tmp_path: Path) -> None:
    """n = 3, t = 2: all three upload to round 1; one named decryptor drops before its share.  At the deadline
    the attempt fails.  The next ones (fresh seeds) take the two uploads left, but the decryptor that answered made
    its share of round 1 over all three uploads, and a second sum of the round over two of them would give the
    lost member's update away (``ThresholdKeys`` decrypts one uploader set per round): the coordinator names no
    decryptor bound to another set, so with one member free the attempts fail and the job pauses at
    ``max_attempts``, nothing decrypted and nothing refused.  Once the lost member is back and the admin starts
    the job again, the next attempt takes all three uploads again, its decryptors make their shares and the job
    finishes its rounds; every member holds the same global, combined itself."""
    fed = Federation(tiny_encoder_dir, tmp_path)
    job = fed.job
    fed.run_until(lambda: job.open is not None and job.open.state is RoundState.DECRYPTING)
    r = job.open
    assert r is not None and r.number == 1 and len(r.reported) == 3
    decryption = job.rounds.decryption(1)
    lost = decryption.decryptors[-1]
    fed.dropped.add(lost)
    # the door refuses who is not named, an attempt that is not the open one, and a round not decrypting
    outsider = next(m for m in fed.sites if m not in decryption.decryptors)
    with pytest.raises(NotSelected):
        job.relay.decryption(outsider, 1)
    with pytest.raises(PreconditionFailed, match="decrypts attempt"):
        job.relay.submit_share(decryption.decryptors[0], 1, r.attempt + 1, b"x")
    with pytest.raises(StaleRound):
        job.relay.decryption(decryption.decryptors[0], 2)

    fed.run_until(lambda: job.state.value == "paused")
    assert fed.refusals == [] and "online members may decrypt these uploads" in job.lifecycle.reason
    assert fed.jobs.store.prompt(fed.job_id, 1) is None
    failed = [row for row in fed.jobs.store.rounds(fed.job_id) if row.round == 1]
    assert [row.state for row in failed] == ["failed"] * job.rounds.max_attempts  # the dropped decryptor's first

    fed.dropped.clear()
    assert not fed.step()  # the lost member is back (seen online); the paused job gives no work
    job.start()
    fed.run_until(lambda: job.state.value == "done")
    assert fed.refusals == []
    stored = fed.jobs.store.prompt(fed.job_id, 1)
    assert stored is not None and stored[0] == ENCODING
    version = unpack_version(stored[1])
    assert version.attempt > 2 and version.uploaders == tuple(sorted(fed.sites))
    finals = [site.global_vector(2) for site in fed.sites.values()]
    assert all(np.array_equal(final, finals[0]) for final in finals) and np.isfinite(finals[0]).all()
    info = fed.sites[lost].info
    assert info is not None and (tmp_path / info.participant_id / "prompt-latest.safetensors").exists()


def test_a_member_given_work_before_its_next_look_at_the_relay_completes_its_key_first(
        tiny_encoder_dir: Path, tmp_path: Path) -> None:
    """The coordinator hands out tasks once every member published and dealt, which can be before a member's
    next look at the relay (a daemon polls between tasks): the member completes its key when the task needs it,
    instead of failing the task."""
    fed = Federation(tiny_encoder_dir, tmp_path)
    late = fed.sites["site-2"]  # not the member that provides version 0
    late.service_keys()  # publishes and deals, but the others have not dealt yet: no key
    assert late.threshold is not None and not late.threshold.ready
    fed.dropped.add("site-2")
    fed.run_until(lambda: fed.job.latest_version() == 0)  # the others complete their keys; version 0 is in
    assert not late.threshold.ready and fed.job.keys is not None and fed.job.keys.ready()
    task = late.link.get_task(fed.job_id, 0)
    assert task.kind is TaskKind.EVALUATE
    late.handle(task)  # evaluating version 0 needs the group key: completed here
    assert late.threshold.ready
