"""Config files are validated at load, and a bad value names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedprompt.config import JobConfig, ParticipantConfig, dump_toml, load_toml, parse_toml
from fedprompt.errors import ConfigError


def test_defaults_round_trip_through_toml() -> None:
    config = parse_toml("", JobConfig)
    assert parse_toml(dump_toml(config), JobConfig) == config


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[job]\nrounds = 0", "job.rounds"),
        ("[job]\nroundz = 3", "job.roundz"),
        ("[job]\nrounds = 'five'", "job.rounds"),
        ("[job]\nparticipants_per_round = 2\nmin_participants = 3", "job.min_participants"),
        ("[train]\nlr = -1.0", "train.lr"),
        ("[model]\nkind = 'rnn'", "model.kind"),
        ("[task]\nlabel_names = ['a', 'b']\nlabel_words = ['x']", "task.label_words"),
        ("[task]\ntemplate = 'no placeholder'", "task.template"),
        ("[mystery]\nx = 1", "mystery"),
        ("job = 3", "job"),
    ],
)
def test_bad_values_name_their_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_toml(text, JobConfig)


def test_invalid_toml_names_the_source() -> None:
    with pytest.raises(ConfigError, match="my.toml: invalid TOML"):
        parse_toml("[job\n", JobConfig, "my.toml")


def test_overrides_apply_before_validation(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("[participant]\njob = 'demo'\ndata_dir = 'x'\ninsecure = true\n")
    config = load_toml(path, ParticipantConfig, {"participant.threads": 4})
    assert config.participant.threads == 4
    with pytest.raises(ConfigError, match="participant.threads"):
        load_toml(path, ParticipantConfig, {"participant.threads": 0})


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_toml(tmp_path / "absent.toml", JobConfig)


def test_example_configs_load() -> None:
    from fedprompt.app.protogen import REPO
    from fedprompt.config import CoordinatorConfig

    assert load_toml(REPO / "examples" / "job.toml", JobConfig).job.name == "rt-sentiment"
    assert load_toml(REPO / "examples" / "participant.toml", ParticipantConfig).participant.threads == 1
    assert load_toml(REPO / "examples" / "coordinator.toml", CoordinatorConfig).coordinator.listen == "0.0.0.0:50051"
