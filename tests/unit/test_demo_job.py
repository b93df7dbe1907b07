"""The demo's job config: DP on by default with its large-batch recipe, the plain recipe with --no-dp, and
--method / --batch-size / --steps / --lr reaching it (validated at once)."""

from __future__ import annotations

import pytest

from fedprompt.app.cli import build_parser
from fedprompt.app.demo import LR_SCALE, DemoOptions, demo_job, he_report, options_from_args
from fedprompt.errors import ConfigError


def job_from(argv: list[str]):
    return demo_job(options_from_args(build_parser().parse_args(["demo", *argv])))


def test_demo_runs_dp_by_default_with_the_large_batch_recipe() -> None:
    config = job_from([])
    assert config.dp.enabled and config.dp.epsilon == 8.0
    assert (config.train.batch_size, config.train.max_steps, config.train.lr) == (256, 4, 0.1)
    assert config.he.enabled


def test_demo_runs_threshold_keys_by_default_and_reports_t_of_n() -> None:
    config = job_from(["--participants", "5"])
    assert config.he.threshold_mode and len(config.job.allowed_participants) == 5
    report = he_report(config)
    assert (report["he"], report["he_t"], report["he_n"], report["he_weight_unit"]) == ("threshold", 3, 5, 100)
    assert he_report(job_from(["--no-he"]))["he"] is False


def test_no_dp_uses_the_plain_recipe_and_the_causal_backbone_its_own() -> None:
    plain = job_from(["--no-dp"])
    assert not plain.dp.enabled
    assert (plain.train.batch_size, plain.train.max_steps, plain.train.lr) == (16, 30, 0.01)
    causal = demo_job(DemoOptions(backbone="causal"))
    assert (causal.train.batch_size, causal.train.max_steps, causal.train.lr) == (8, 30, 0.003)


def test_demo_batch_steps_and_lr_flags_reach_the_job() -> None:
    config = job_from(["--no-dp", "--batch-size", "64", "--steps", "5", "--lr", "0.05"])
    assert (config.train.batch_size, config.train.max_steps, config.train.lr) == (64, 5, 0.05)
    assert not config.dp.enabled


def test_demo_method_flag_reaches_the_job_with_the_method_s_learning_rate() -> None:
    for method in ("prompt", "prefix", "lora"):
        config = job_from(["--method", method])
        assert config.peft.method == method
        assert config.train.lr == pytest.approx(0.1 * LR_SCALE[method])
    assert job_from(["--method", "lora", "--lr", "0.02"]).train.lr == 0.02


@pytest.mark.parametrize(("options", "key"), [(DemoOptions(batch_size=0), "train.batch_size"),
                                              (DemoOptions(method="adapter"), "peft.method"),
                                              (DemoOptions(lr=0.0), "train.lr"),
                                              (DemoOptions(epsilon=-1.0), "dp.epsilon")])
def test_demo_refuses_a_bad_option_naming_it(options: DemoOptions, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        demo_job(options)
