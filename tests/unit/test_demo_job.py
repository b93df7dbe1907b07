"""The demo's job config: defaults per backbone, and --batch-size / --lr reaching it (validated at once)."""

from __future__ import annotations

import pytest

from fedprompt.cli import build_parser
from fedprompt.demo import DemoOptions, demo_job, options_from_args
from fedprompt.errors import ConfigError


def test_demo_job_defaults_per_backbone() -> None:
    encoder, causal = demo_job(DemoOptions()), demo_job(DemoOptions(backbone="causal"))
    assert (encoder.train.batch_size, encoder.train.lr) == (16, 0.01)
    assert (causal.train.batch_size, causal.train.lr) == (8, 0.003)


def test_demo_batch_and_lr_flags_reach_the_job() -> None:
    args = build_parser().parse_args(["demo", "--dp", "--batch-size", "256", "--steps", "4", "--lr", "0.1"])
    config = demo_job(options_from_args(args))
    assert (config.train.batch_size, config.train.max_steps, config.train.lr) == (256, 4, 0.1)
    assert config.dp.enabled


@pytest.mark.parametrize(("options", "key"), [(DemoOptions(batch_size=0), "train.batch_size"),
                                              (DemoOptions(lr=0.0), "train.lr")])
def test_demo_refuses_a_bad_batch_or_lr_naming_it(options: DemoOptions, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        demo_job(options)
