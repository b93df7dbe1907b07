"""A Gram defence under threshold keys (``he.mode = "threshold"``, ``coordinator.threshold_gramjob``) in the
in-process simulation (``LocalLink``): the members set up the collective key and the collective Gram evaluation
keys through the coordinator's relay, upload attested public-key ciphertexts, t of them decrypt the Gram scalars
the coordinator computed (each recomputing it from the attested uploads), the defence rejects a scaled attacker as
the plaintext defence does on the very updates that were encrypted, and t members decrypt the accepted sum, which
every member opens itself.  Real SEAL ciphertexts, the real coordinator and participant code; no network."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from fedprompt.app.attacks import AttackSection
from fedprompt.app.local_link import LocalLink
from fedprompt.app.simulate import simulate
from fedprompt.config import HESection, RobustSection, dump_toml
from fedprompt.config.signed import sign_config
from fedprompt.coordinator.aggregation import GramDefence, make_aggregator
from fedprompt.coordinator.jobs import JobManager
from fedprompt.coordinator.recovery import resume_jobs
from fedprompt.coordinator.robust import gram
from fedprompt.coordinator.rounds import RoundState
from fedprompt.coordinator.store import JobState, Store
from fedprompt.coordinator.tasks import dispatch_state
from fedprompt.coordinator.threshold_gramjob import GramDecryption, GramThresholdKeyRelay
from fedprompt.crypto.attest import KeyCredentials
from fedprompt.crypto.errors import AttestationError
from fedprompt.crypto.pki import CertificateAuthority
from fedprompt.models import load_backbone
from fedprompt.participant.learners import local_learner
from fedprompt.participant.runtime import ParticipantRuntime
from fedprompt.protocol import GramKeyState, TaskKind
from tests.support import tiny_job, toy_sites

SITES = 3


@pytest.mark.slow
def test_a_threshold_gram_defence_rejects_a_scaled_attacker_like_plaintext(tiny_encoder_dir: Path,
                                                                           tmp_path: Path) -> None:
    """min_participants = SITES - 1: members decrypt no accepted sum of fewer (``docs/he.md``, "The uploader
    floor"), and the honest sites left once the attacker is rejected are its sum; so max_malicious = 0 (norm
    bounding with f = 1 judges no fewer than 2f + 1 = 3 updates, above that minimum), which still rejects by the
    norm factor."""
    robust = RobustSection(max_malicious=0, norm_factor=2.0)
    config = dataclasses.replace(
        tiny_job(tiny_encoder_dir, rounds=2, participants_per_round=SITES, min_participants=SITES - 1,
                 aggregator="norm_bound"),
        he=HESection(enabled=True, gram_norm_bound=10.0), robust=robust)
    assert config.he.threshold_mode  # the default mode
    attack = AttackSection(kind="backdoor", malicious_fraction=0.34, target_label="pos", scale=20.0)
    report = simulate(config, toy_sites(SITES), attack=attack, state_root=tmp_path)
    assert report["state"] == "done"
    malicious = report["malicious"]
    assert len(malicious) == 1
    plain = make_aggregator("norm_bound", robust)
    assert isinstance(plain, GramDefence)
    names = [f"site-{k}" for k in range(SITES)]
    for r in report["detection"]["rounds"]:
        assert malicious[0] in r["rejected"], r
        deltas = np.stack([np.load(tmp_path / name / "updates" / f"round-{r['round']:04d}.npy") for name in names])
        expected = plain.decide(gram(deltas))
        assert sorted(r["rejected"]) == sorted(names[i] for i in expected.rejected)
    assert report["detection"]["recall"] == 1.0
    for r in report["rounds"]:  # every site uploaded; the sum decrypted is the two accepted uploads'
        assert r["accuracy"] is not None and (r["updates"], r["aggregated"]) == (SITES, SITES - 1)
    finals = [np.load(tmp_path / name / "globals" / "version-0002.npy") for name in names]
    assert all(np.array_equal(finals[0], f) for f in finals[1:]) and np.isfinite(finals[0]).all()


def test_a_restarted_coordinator_replays_the_gram_key_relay(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    """Members set up the collective key and the Gram evaluation keys through a coordinator backed by a SQLite
    file; a coordinator restarted from that file replays every relayed Gram key message, checked again, into its
    own evaluator, so its members hold the job's keys there too."""
    store = tmp_path / "state.sqlite"
    jobs = JobManager(Store(store), offline_after_s=90.0)
    names = tuple(f"site-{k}" for k in range(SITES))
    config = tiny_job(tiny_encoder_dir, rounds=1, participants_per_round=SITES, min_participants=SITES,
                      aggregator="norm_bound", allowed_participants=names)
    job_id = jobs.create_job(dump_toml(dataclasses.replace(config, he=HESection(enabled=True))))
    backbone = load_backbone(str(tiny_encoder_dir))
    sites = [ParticipantRuntime(LocalLink(jobs, name), site, job_id, lambda cfg: local_learner(cfg, backbone),
                                state_dir=tmp_path / name) for name, site in zip(names, toy_sites(SITES), strict=True)]
    for site in sites:
        site.join()
    for _ in range(4):
        for site in sites:
            site.service_keys()
    keys = jobs.job(job_id).keys
    assert isinstance(keys, GramThresholdKeyRelay) and keys.ready() and all(s.gram and s.gram.evaluator for s in sites)
    restarted = JobManager(Store(store), offline_after_s=90.0)
    assert job_id in resume_jobs(restarted)
    replayed = restarted.job(job_id).keys
    assert isinstance(replayed, GramThresholdKeyRelay) and replayed.ready() and replayed.grams.evaluator is not None
    assert all(replayed.holds(name) for name in names)


def test_the_sum_phase_gets_a_deadline_of_its_own(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    """The t decryptors answer the Gram phase late in the attempt's deadline: the verdict opens the sum's phase
    with a fresh ``round_deadline_s`` (and wakes long-polls), and the round completes past the attempt's first
    deadline."""
    now = [1000.0]
    jobs = JobManager(Store(":memory:"), clock=lambda: now[0], offline_after_s=900.0)
    names = tuple(f"site-{k}" for k in range(SITES))
    config = tiny_job(tiny_encoder_dir, rounds=1, participants_per_round=SITES, min_participants=SITES,
                      aggregator="norm_bound", allowed_participants=names, round_deadline_s=60.0)
    job_id = jobs.create_job(dump_toml(dataclasses.replace(config, he=HESection(enabled=True, gram_norm_bound=10.0),
                                                           robust=RobustSection(max_malicious=1, norm_factor=2.0))))
    job = jobs.job(job_id)
    backbone = load_backbone(str(tiny_encoder_dir))
    sites = {name: ParticipantRuntime(LocalLink(jobs, name), site, job_id, lambda cfg: local_learner(cfg, backbone))
             for name, site in zip(names, toy_sites(SITES), strict=True)}
    for site in sites.values():
        site.join()
    job.start()

    def decrypting() -> bool:
        return job.open is not None and job.open.state is RoundState.DECRYPTING

    for _ in range(20):
        for site in sites.values():
            if decrypting():
                break
            site.service_keys()
            task = site.link.get_task(job_id, 0)
            if task.kind is not TaskKind.WAIT:
                site.handle(task)
    r = job.open
    assert r is not None and r.state is RoundState.DECRYPTING
    decryption = job.rounds.decryption(1)
    assert isinstance(decryption, GramDecryption) and decryption.phase == "gram"
    now[0] = r.deadline - 5.0
    before = dispatch_state(job)
    for name in decryption.decryptors:
        sites[name].handle(sites[name].link.get_task(job_id, 0))
    assert decryption.phase == "sum" and r.deadline == now[0] + 60.0
    assert dispatch_state(job) != before  # waiting decryptors' long-polls wake for the sum's phase
    now[0] += 30.0  # past the attempt's first deadline, within the sum's
    for name in decryption.decryptors:
        sites[name].handle(sites[name].link.get_task(job_id, 0))
    assert job.latest_version() == 1 and decryption.decision is not None
    assert decryption.uploaders == tuple(sorted(decryption.decision.accepted))


class SwappingLink(LocalLink):
    """A relay that serves one member's first-round Gram messages in another's place."""

    def gram_keys(self, job_id: str) -> GramKeyState:
        state = super().gram_keys(job_id)
        first = {g: msg for who, g, msg, _ in state.round1 if who == "participant:site-1"}
        return GramKeyState(tuple((who, g, first.get(g, msg) if who == "participant:site-2" else msg, att)
                                  for who, g, msg, att in state.round1), state.round2, state.next_page)


def test_a_member_refuses_a_swapped_gram_key_message_and_the_job_pauses(tiny_encoder_dir: Path,
                                                                         tmp_path: Path) -> None:
    """Members with certificates verify every relayed Gram key message: a relay that serves site-1's message in
    site-2's place is refused by the member it serves (``AttestationError``), which reports it, and the job pauses
    naming why."""
    ca = CertificateAuthority.init(tmp_path / "ca")
    jobs = JobManager(Store(":memory:"), offline_after_s=900.0)
    names = tuple(f"participant:site-{k}" for k in range(SITES))
    config = tiny_job(tiny_encoder_dir, rounds=1, participants_per_round=SITES, min_participants=SITES,
                      aggregator="norm_bound", allowed_participants=names)
    toml = dump_toml(dataclasses.replace(config, he=HESection(enabled=True)))
    admin_key, admin_cert = ca.issue("admin:alice", tmp_path / "certs" / "admin")
    admin = KeyCredentials.from_files(ca.ca_cert_path, admin_cert, admin_key)
    job_id = jobs.create_job(toml, sign_config(admin.signer, toml))
    backbone = load_backbone(str(tiny_encoder_dir))
    runtimes: list[ParticipantRuntime] = []
    for k, (name, data) in enumerate(zip(names, toy_sites(SITES), strict=True)):
        key, cert = ca.issue(name, tmp_path / "certs" / f"site-{k}")
        link = (SwappingLink if k == 0 else LocalLink)(jobs, name)
        runtimes.append(ParticipantRuntime(link, data, job_id, lambda cfg: local_learner(cfg, backbone),
                                           credentials=KeyCredentials.from_files(ca.ca_cert_path, cert, key)))
    for runtime in runtimes:
        runtime.join()
    with pytest.raises(AttestationError, match="not the key it signed"):
        for _ in range(4):
            for runtime in runtimes:
                runtime.service_keys()
    job = jobs.job(job_id)
    assert job.state is JobState.PAUSED and "participant:site-0" in job.lifecycle.reason
