"""Whole levelled jobs in process: encrypted with admin cohorts (every participant rebuilds its own
global + expert prompt from per-level ciphertext sums), and with discovered cohorts, plaintext and encrypted."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from fedprompt.app.simulate import simulate
from fedprompt.config import CohortSpec, HESection, LevelsSection
from tests.support import tiny_job, toy_sites


def _levels(**kwargs: object) -> LevelsSection:
    return LevelsSection(enabled=True, global_tokens=2, expert_tokens=1, personal_tokens=1, **kwargs)  # type: ignore[arg-type]


def test_encrypted_levelled_job_sums_each_cohort(tiny_encoder_dir: Path) -> None:
    cohorts = (CohortSpec("x", ("site-0", "site-1")), CohortSpec("y", ("site-2", "site-3")))
    config = dataclasses.replace(tiny_job(tiny_encoder_dir, rounds=2, participants_per_round=4, min_participants=4),
                                 levels=_levels(cohorts=cohorts), he=HESection(enabled=True, mode="single_key"))
    report = simulate(config, toy_sites(4))
    assert report["state"] == "done" and len(report["final_by_participant"]) == 4
    assert all(r["expert_cohorts_updated"] == 2 and r["expert_cohorts_withheld"] == 0 for r in report["rounds"])


def test_plaintext_levelled_job_discovers_cohorts(tiny_encoder_dir: Path) -> None:
    config = dataclasses.replace(tiny_job(tiny_encoder_dir, rounds=3, participants_per_round=4, min_participants=4),
                                 levels=_levels(cohorts_from="discover", num_cohorts=2, discover_round=1))
    report = simulate(config, toy_sites(4))
    assert report["state"] == "done" and set(report["cohorts"]) == {f"site-{k}" for k in range(4)}
    assert len(set(report["cohorts"].values())) == 2 and report["rounds"][0]["cohorts_discovered"] == 2
    assert report["rounds"][2]["expert_cohorts_updated"] == 2


def test_encrypted_levelled_job_discovers_cohorts_like_plaintext(tiny_encoder_dir: Path) -> None:
    """The dealer uploads evaluation keys, round 1's encrypted Gram matrix is decrypted by two key holders and
    clustered: the same cohorts as the plaintext run of the same sites, seeds and rounds."""
    plain = dataclasses.replace(tiny_job(tiny_encoder_dir, rounds=3, participants_per_round=4, min_participants=4),
                                levels=_levels(cohorts_from="discover", num_cohorts=2, discover_round=1))
    report = simulate(dataclasses.replace(plain, he=HESection(enabled=True, mode="single_key")), toy_sites(4))
    assert report["state"] == "done" and len(report["final_by_participant"]) == 4
    assert report["cohorts"] == simulate(plain, toy_sites(4))["cohorts"]
    assert len(set(report["cohorts"].values())) == 2
    first = report["rounds"][0]
    assert first["cohorts_discovered"] == 2 and first["gram_seconds"] > 0
