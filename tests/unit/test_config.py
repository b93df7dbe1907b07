"""Config files are validated at load, and a bad value names its key."""

from __future__ import annotations

import ast
import dataclasses
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from fedprompt.config import (
    CoordinatorConfig,
    JobConfig,
    ParticipantConfig,
    dump_toml,
    load_toml,
    parse_toml,
)
from fedprompt.errors import ConfigError
from tests.support import CONFIGS, KeyPath, dotted_key, nested


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
        ("[job]\nallowed_participants = ['participant:a']\n[he]\nenabled = true", "job.allowed_participants"),
        ("job = 3", "job"),
        ("[he]\nweight_unit = 0", "he.weight_unit"),
        ("[he]\nweight_unit = -100.0", "he.weight_unit"),
        ("[he]\nweight_unit = 'many'", "he.weight_unit"),
        ("[he]\nweight_unit = inf", "he.weight_unit"),
    ],
)
def test_bad_values_name_their_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_toml(text, JobConfig)


def test_an_encrypted_single_key_job_open_to_two_or_to_any_participants_loads() -> None:
    for allowed in ("['participant:a', 'participant:b']", "['*']"):
        config = parse_toml(f"[job]\nallowed_participants = {allowed}\n[he]\nenabled = true\nmode = 'single_key'",
                            JobConfig)
        assert config.he.enabled and not config.he.threshold_mode


def test_encrypted_jobs_default_to_threshold_keys_among_their_named_members() -> None:
    config = parse_toml("[job]\nallowed_participants = ['participant:a', 'participant:b', 'participant:c']\n[he]\n"
                        "enabled = true", JobConfig)
    assert config.he.threshold_mode and config.he.threshold_params(3).t == 2
    with pytest.raises(ConfigError, match=r"job\.allowed_participants: must name the enrolled members"):
        parse_toml("[job]\nallowed_participants = ['*']\n[he]\nenabled = true", JobConfig)


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

    assert load_toml(REPO / "examples" / "job.toml", JobConfig).job.name == "rt-sentiment"
    assert load_toml(REPO / "examples" / "participant.toml", ParticipantConfig).participant.threads == 1
    assert load_toml(REPO / "examples" / "coordinator.toml", CoordinatorConfig).coordinator.listen == "0.0.0.0:50051"


# Every key of every config file, walked from the dataclasses themselves, so a section added later is covered.
#: For each scalar annotation, a near miss the loader must refuse (a bool is a Python int, an int is no bool).
WRONG: dict[Any, tuple[Any, str]] = {
    int: (True, "must be an integer"),
    float: (False, "must be a number"),
    bool: (1, "must be true or false"),
    str: (3, "must be a string"),
}


def _bad_values(cls: type[Any], path: KeyPath = ()) -> Iterator[tuple[KeyPath, Any, str]]:
    """Each (path, value, message start) that must be refused: an unknown key in every table, and a value of the
    wrong type for every key, tables and lists included."""
    yield (*path, "bogus"), 1, "unknown key (allowed: "
    for name, annotation in typing.get_type_hints(cls).items():
        key = (*path, name)
        if dataclasses.is_dataclass(annotation):
            yield key, 3, "must be a table, got int"
            yield from _bad_values(annotation, key)  # type: ignore[arg-type]
        elif typing.get_origin(annotation) is tuple:
            yield key, "a", "must be a list, got str"
            (inner, _) = typing.get_args(annotation)
            if dataclasses.is_dataclass(inner):
                yield from _bad_values(inner, (*key, 0))  # type: ignore[arg-type]
            else:
                value, message = WRONG[inner]
                yield (*key, 0), value, message
        else:
            value, message = WRONG[annotation]
            yield key, value, message


CASES = [pytest.param(cls, path, value, message, id=f"{cls.__name__}:{dotted_key(path)}={value!r}")
         for cls in CONFIGS for path, value, message in _bad_values(cls)]


@pytest.mark.parametrize(("cls", "path", "value", "message"), CASES)
def test_every_unknown_key_and_wrong_type_is_named_by_its_dotted_key(
    cls: type[Any], path: KeyPath, value: Any, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_toml(tomli_w.dumps(nested(path, value)), cls)
    assert str(info.value).startswith(f"{dotted_key(path)}: {message}"), str(info.value)


def test_the_walk_reaches_every_section_of_every_config() -> None:
    sections = {dotted_key(path[:-1]) for cls in CONFIGS for path, _, message in _bad_values(cls)
                if message.startswith("unknown key")}
    assert sections == {
        "", "job", "model", "task", "train", "augment", "he", "dp", "robust", "blackbox", "levels", "peft",
        "levels.cohorts[0]", "coordinator", "participant", "participant.format", "model_service",
    }


def test_the_package_facade_re_exports_every_public_name_of_its_modules() -> None:
    """``from fedprompt.config import X`` stays the one import path, whichever module of the package defines X."""
    import importlib
    import pkgutil

    import fedprompt.config as facade

    internal = {"check", "check_range", "show", "T"}  # the codec's validation helpers and type variable, used inside the package only
    for info in pkgutil.iter_modules(facade.__path__):
        module = importlib.import_module(f"fedprompt.config.{info.name}")
        tree = ast.parse(Path(module.__file__ or "").read_text(encoding="utf-8"))
        defined = {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
        defined |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        for name in sorted(n for n in defined - internal if not n.startswith("_")):
            assert name in facade.__all__ and getattr(facade, name) is getattr(module, name), f"{info.name}.{name}"
