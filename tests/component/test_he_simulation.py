"""The in-process simulation (``LocalLink``) runs encrypted jobs too: keys dealt, rounds folded, globals
rebuilt by every participant and evaluated."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from fedprompt.app.simulate import simulate
from fedprompt.config import HESection, JobConfig, parse_toml
from fedprompt.crypto.ckks import CkksParams
from fedprompt.promptfile import load_prompt
from tests.support import tiny_job, toy_sites


def test_encrypted_simulation_completes(tiny_encoder_dir: Path) -> None:
    config = dataclasses.replace(tiny_job(tiny_encoder_dir, rounds=2), he=HESection(enabled=True, mode="single_key"))
    report = simulate(config, toy_sites())
    assert report["state"] == "done"
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    # one seeded ciphertext (c0 only: N coefficients of 8 bytes, less SEAL's compression) per update
    seeded = 0.9 * CkksParams().poly_modulus_degree * 8
    for r in report["rounds"]:
        assert r["metric_reports"] == 3 and r["accuracy"] is not None
        assert r["updates"] == 3 and r["bytes_up"] > 3 * seeded


def test_encrypted_fedavg_follows_the_plaintext_trajectory(tiny_encoder_dir: Path) -> None:
    """Secure aggregation must not change the maths: same sites, seeds and rounds, plaintext vs CKKS, and every
    round's evaluation (by each site on its own decrypted global) matches to CKKS precision."""
    plain = tiny_job(tiny_encoder_dir, rounds=3)
    encrypted = dataclasses.replace(plain, he=HESection(enabled=True, mode="single_key"))
    p, h = (simulate(config, toy_sites())["rounds"] for config in (plain, encrypted))
    assert [r["accuracy"] for r in h] == [r["accuracy"] for r in p]
    for a, b in zip(h, p, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


def test_an_encrypted_simulation_exports_the_global_its_sites_rebuilt(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    """The coordinator never holds an encrypted job's global: ``export`` writes the one the first site rebuilt,
    in the file ``predict --prompt`` reads."""
    config = dataclasses.replace(tiny_job(tiny_encoder_dir, rounds=1), he=HESection(enabled=True, mode="single_key"))
    out = tmp_path / "he.safetensors"
    report = simulate(config, toy_sites(), export=out)
    vector, config_toml = load_prompt(out)
    assert report["exported"] == str(out) and vector.size == report["exchanged_params"]
    assert parse_toml(config_toml, JobConfig).he.enabled
