"""Gram defences on encrypted updates, in-process (``LocalLink``): a scaled attacker is rejected, and every
round's encrypted decision equals the plaintext defence's on the very updates that were encrypted."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from fedprompt.app.attacks import AttackSection
from fedprompt.app.simulate import simulate
from fedprompt.config import HESection, RobustSection
from fedprompt.coordinator.aggregation import GramDefence, make_aggregator
from fedprompt.coordinator.robust import gram
from tests.support import tiny_job, toy_sites

SITES = 5


@pytest.mark.parametrize("aggregator", ["norm_bound", "multi_krum"])
def test_encrypted_gram_defence_rejects_scaled_attacker_like_plaintext(tiny_encoder_dir: Path, tmp_path: Path,
                                                                       aggregator: str) -> None:
    robust = RobustSection(max_malicious=1, norm_factor=2.0)
    config = dataclasses.replace(
        tiny_job(tiny_encoder_dir, rounds=2, participants_per_round=SITES, min_participants=SITES,
                 aggregator=aggregator),
        he=HESection(enabled=True, mode="single_key"), robust=robust)
    attack = AttackSection(kind="backdoor", malicious_fraction=0.2, target_label="pos", scale=20.0)
    sites = toy_sites(SITES)
    report = simulate(config, sites, attack=attack, state_root=tmp_path)
    assert report["state"] == "done"
    malicious = report["malicious"]
    assert len(malicious) == 1
    plain = make_aggregator(aggregator, robust)
    assert isinstance(plain, GramDefence)
    for r in report["detection"]["rounds"]:
        assert malicious[0] in r["rejected"], r
        names = [f"site-{k}" for k in range(SITES)]
        deltas = np.stack([np.load(tmp_path / name / "updates" / f"round-{r['round']:04d}.npy") for name in names])
        expected = plain.decide(gram(deltas))
        assert sorted(r["rejected"]) == sorted(names[i] for i in expected.rejected)
    assert report["detection"]["recall"] == 1.0
    for r in report["rounds"]:
        assert r["gram_seconds"] > 0 and r["accuracy"] is not None
