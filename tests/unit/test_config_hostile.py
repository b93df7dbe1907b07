"""Hostile config input: every number has a finite range named in its error, hostile TOML text becomes a one-line
``ConfigError`` naming its source, and a job's name keeps path separators and control characters out.

The numeric walk reads the dataclasses themselves (as ``test_config``'s key walk does), so a number added to any
section later is covered: NaN, both infinities and huge values must be refused naming the key, except ``inf``
where a field carries ``INF_ALLOWED``.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedprompt.app.attacks import AttackSection
from fedprompt.config import (
    INT64_MAX,
    INT64_MIN,
    JOB_NAME_MAX_BYTES,
    MAX_TOML_BYTES,
    JobConfig,
    dump_toml,
    from_mapping,
    job_name_problem,
    load_toml,
    parse_toml,
)
from fedprompt.data.shards import DataPlan
from fedprompt.errors import ConfigError
from tests.support import CONFIGS, KeyPath, dotted_key, nested

#: The simulation file's own tables, loaded by the same codec (``app.simulate.parse_simulation``).
SIMULATION: dict[str, type[Any]] = {"simulation": DataPlan, "attack": AttackSection}
FLOATS = (float("nan"), float("inf"), float("-inf"), 1e300, -1e300)
INTS = (float("nan"), float("inf"), float("-inf"), INT64_MAX, INT64_MIN, 2**64)
#: Seeds take any non-negative 64-bit integer: the largest TOML integer is in their range.
SEEDS = {"job.seed", "simulation.seed", "attack.seed"}
#: Siblings an accepted ``inf`` needs: ``dp.epsilon = inf`` means "no budget" only with a fixed noise multiplier.
INF_CONTEXT: dict[str, dict[str, Any]] = {"dp.epsilon": {"noise_multiplier": 1.0}}


def _numbers(cls: type[Any], path: KeyPath = ()) -> Iterator[tuple[KeyPath, Any, bool]]:
    """Each (path, annotation, inf allowed) of a number, at any depth (list elements as index 0)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, annotation in typing.get_type_hints(cls).items():
        key = (*path, name)
        if dataclasses.is_dataclass(annotation):
            yield from _numbers(annotation, key)  # type: ignore[arg-type]
        elif typing.get_origin(annotation) is tuple:
            (inner, _) = typing.get_args(annotation)
            if dataclasses.is_dataclass(inner):
                yield from _numbers(inner, (*key, 0))  # type: ignore[arg-type]
            elif inner in (int, float):
                yield (*key, 0), inner, False
        elif annotation in (int, float):
            yield key, annotation, bool(fields[name].metadata.get("inf_allowed"))


def _cases() -> Iterator[Any]:
    for cls in CONFIGS:
        for path, annotation, inf_allowed in _numbers(cls):
            for value in FLOATS if annotation is float else INTS:
                accepted = (inf_allowed and value == float("inf")) or (dotted_key(path) in SEEDS and value == INT64_MAX)
                yield pytest.param(cls, path, value, accepted, id=f"{cls.__name__}:{dotted_key(path)}={value!r}")


#: What each config needs besides the key under test to be valid: process configs check their TLS keys first.
BASE: dict[str, dict[str, Any]] = {
    "coordinator": {"insecure": True},
    "participant": {"insecure": True, "job": "j", "data_dir": "d"},
    "model_service": {"insecure": True},
}


def _parse(cls: type[Any], path: KeyPath, value: Any, extra: dict[str, Any] | None = None) -> Any:
    data = nested(path, value)
    table = data[path[0]]
    if isinstance(table, dict):
        data[path[0]] = {**BASE.get(str(path[0]), {}), **(extra or {}), **table}
    return parse_toml(tomli_w.dumps(data), cls)


@pytest.mark.parametrize(("cls", "path", "value", "accepted"), list(_cases()))
def test_every_number_refuses_nan_infinities_and_huge_values_naming_its_key(
    cls: type[Any], path: KeyPath, value: Any, accepted: bool
) -> None:
    key = dotted_key(path)
    if accepted:
        config = _parse(cls, path, value, INF_CONTEXT.get(key))
        assert dataclasses.asdict(config)[str(path[0])][str(path[1])] == value
        return
    with pytest.raises(ConfigError) as info:
        _parse(cls, path, value)
    message = str(info.value)
    named = key if not isinstance(path[-1], int) else dotted_key(path[:-1])  # a list element: the list, or its entry
    assert message.startswith(f"{named}") and "\n" not in message and len(message) < 300, message


def test_the_numeric_walk_finds_every_number_and_exactly_two_that_take_inf() -> None:
    found = {f"{cls.__name__}:{dotted_key(path)}": inf for cls in CONFIGS for path, _, inf in _numbers(cls)}
    assert len(found) >= 60, sorted(found)
    assert {k for k, inf in found.items() if inf} == {"JobConfig:dp.epsilon", "JobConfig:dp.participant_epsilon"}
    assert {"JobConfig:job.seed", "JobConfig:job.round_deadline_s", "JobConfig:he.coeff_mod_bit_sizes[0]",
            "CoordinatorConfig:coordinator.rate_limit_per_s", "ParticipantConfig:participant.give_up_after_s",
            "ModelServiceConfig:model_service.forward_batch"} <= set(found)
    for cls in CONFIGS:  # the walk's base settings are valid, so each refusal is the number's own
        section = typing.get_type_hints(cls)
        assert parse_toml(tomli_w.dumps({k: BASE.get(k, {}) for k in section}), cls) is not None


@pytest.mark.parametrize(("table", "path", "value"), [
    pytest.param(table, path, value, id=f"{table}.{dotted_key(path)}={value!r}")
    for table, cls in SIMULATION.items() for path, annotation, _ in _numbers(cls)
    for value in (FLOATS if annotation is float else INTS)])
def test_the_simulation_tables_refuse_them_too(table: str, path: KeyPath, value: Any) -> None:
    if f"{table}.{dotted_key(path)}" in SEEDS and value == INT64_MAX:
        assert from_mapping(SIMULATION[table], nested(path, value), table).seed == INT64_MAX
        return
    with pytest.raises(ConfigError) as info:
        from_mapping(SIMULATION[table], nested(path, value), table)
    assert str(info.value).startswith(f"{table}.{dotted_key(path)}: "), str(info.value)


@pytest.mark.parametrize(("text", "message"), [
    ("[job]\nround_deadline_s = inf", "job.round_deadline_s: must be in (0, 604800] (seconds), got inf"),
    ("[job]\nparticipants_per_round = 1000000000000", "job.participants_per_round: must be in [1, 100000], got 1000000000000"),
    ("[job]\nseed = 1180591620717411303424", "job.seed: must be a 64-bit integer, got 1180591620717411303424"),
    ("[job]\nseed = -1", "job.seed: must be in [0, 9223372036854775807], got -1"),
    ("[train]\nmax_steps = 9223372036854775807", "train.max_steps: must be in [0, 1000000] (0 means no cap), got"),
    ("[dp]\nepsilon = 1e15", "dp.epsilon: must be in (0, 1000] or inf, got 1000000000000000.0"),
    ("[dp]\nepsilon = nan", "dp.epsilon: must be in (0, 1000] or inf, got nan"),
    ("[train]\nlr = 1" + "0" * 400, "train.lr: must be a finite number, got 100000000000000000..."),
    ("[job]\nrounds = '" + "A" * 5000 + "'", "job.rounds: must be an integer, got 'AAAA"),
])
def test_the_reported_absurd_numbers_are_refused_with_their_range(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_toml(text, JobConfig)
    assert str(info.value).startswith(message) and len(str(info.value)) < 200, str(info.value)


def test_documented_infinities_still_mean_no_budget() -> None:
    config = parse_toml("[dp]\nenabled = true\nepsilon = inf\nnoise_multiplier = 1.0\nparticipant_epsilon = inf\n",
                        JobConfig)
    assert config.dp.epsilon == config.dp.participant_epsilon == float("inf")
    assert parse_toml(dump_toml(config), JobConfig) == config
    with pytest.raises(ConfigError, match=r"^dp\.epsilon: must be finite when noise_multiplier = 0"):
        parse_toml("[dp]\nepsilon = inf", JobConfig)


#: Hostile TOML text: (id, text, what the message says after "<source>: ").
HOSTILE: list[tuple[str, str, str]] = [
    ("nested-arrays", "x = " + "[" * 5000 + "]" * 5000, "invalid TOML: arrays or inline tables nested too deeply"),
    ("nested-tables", "x = " + "{a = " * 3000 + "1" + "}" * 3000, "invalid TOML: arrays or inline tables nested"),
    ("over-cap", "# " + "x" * MAX_TOML_BYTES + "\n", f"TOML text of {MAX_TOML_BYTES + 3} characters exceeds the limit"),
    ("3.9MB", "[job]\nname = 'big'\n" + "# padding\n" * 390_000, "TOML text of 3900019 characters exceeds the limit"),
    ("multibyte-over-cap", "# " + "é" * (MAX_TOML_BYTES // 2), f"TOML text of {MAX_TOML_BYTES + 2} bytes exceeds the limit of {MAX_TOML_BYTES} bytes"),
    ("truncated-string", "[job]\nname = \"rt-sent", "invalid TOML: Unterminated string (at end of document)"),
    ("truncated-table", "[job]\nrounds = 3\n[tra", "invalid TOML: Expected ']' at the end of a table"),
    ("truncated-value", "[job]\nrounds =", "invalid TOML: Invalid value (at end of document)"),
    ("binary", "\x00\x01\x02\xff\xfe", "invalid TOML: Invalid statement (at line 1, column 1)"),
    ("nul-in-string", "[job]\nname = \"a\x00b\"", "invalid TOML: Illegal character '\\x00' (at line 2, column 10)"),
    ("duplicate-key", "[job]\nrounds = 3\nrounds = 4\n", "invalid TOML: Cannot overwrite a value (at line 3, column 11)"),
    ("duplicate-table", "[job]\nrounds = 3\n[job]\nseed = 1\n", "invalid TOML: Cannot declare ('job',) twice (at line 3"),
    ("long-integer", "[job]\n\nseed = " + "9" * 5000, "invalid TOML: an integer has too many digits (at line 3)"),
    ("lone-surrogate", "[job]\nname = \"\ud800\"", "not UTF-8 text (line 2 has a lone surrogate)"),
    ("bad-date", "[job]\nname = 2023-02-30", "invalid TOML: Invalid date or datetime (at line 2, column 8)"),
]


@pytest.mark.parametrize(("text", "message"), [pytest.param(t, m, id=i) for i, t, m in HOSTILE])
def test_hostile_toml_is_a_one_line_config_error_naming_the_source(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_toml(text, JobConfig, "job config")
    got = str(info.value)
    assert got.startswith(f"job config: {message}") and "\n" not in got and len(got) < 200, got
    context = info.value.__cause__ or (None if info.value.__suppress_context__ else info.value.__context__)
    assert context is None  # no parser traceback rides along


def test_a_file_is_read_no_further_than_the_cap(tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    big.write_bytes(b"# " + b"x" * (4 * MAX_TOML_BYTES))
    with pytest.raises(ConfigError, match=f"big.toml: larger than the limit of {MAX_TOML_BYTES} bytes"):
        load_toml(big, JobConfig)
    if os.path.exists("/dev/zero"):  # an endless file: refused after MAX_TOML_BYTES + 1 bytes
        with pytest.raises(ConfigError, match="/dev/zero: larger than the limit"):
            load_toml("/dev/zero", JobConfig)


def test_a_binary_file_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_bytes(b"[job]\nrounds = 3\nname = \"\xff\xfe\"\n")
    with pytest.raises(ConfigError) as info:
        load_toml(path, JobConfig)
    assert str(info.value) == f"config {path} is not UTF-8 text (byte 0xff on line 3, at offset 25); save it as UTF-8"


def test_what_is_dumped_loads_again() -> None:
    """The coordinator stores and hands out ``dump_toml`` of a job: a canonical text over the cap is refused when
    dumped (at CreateJob), never later when a participant or a restarted coordinator parses it."""
    many = tuple(f"participant:site-{i:07d}" for i in range(MAX_TOML_BYTES // 24))
    config = dataclasses.replace(JobConfig(), job=dataclasses.replace(JobConfig().job, allowed_participants=many))
    with pytest.raises(ConfigError, match=f"^config: its TOML text of .* bytes exceeds the limit of {MAX_TOML_BYTES}"):
        dump_toml(config)


LEGIT_NAMES = ["rt-sentiment", "é" * 60, "日本語のジョブ", "personal-global+expert+personal", "v1.2_run 3", "Müller 2",
               "a" * JOB_NAME_MAX_BYTES, "कार्य", "job"]
HOSTILE_NAMES = {
    "newline": ("evil\nINFO fake log line", "character 5 is '\\n'"),
    "carriage-return": ("ok\rINFO", "character 3 is '\\r'"),
    "ansi": ("\x1b[31mred", "must start with a letter or digit; character 1 is '\\x1b'"),
    "ansi-inside": ("red\x1b[0m", "character 4 is '\\x1b'"),
    "bell": ("ding\x07", "character 5 is '\\x07'"),
    "nul": ("a\x00b", "character 2 is '\\x00'"),
    "slash": ("a/b", "character 2 is '/'"),
    "backslash": ("a\\b", "character 2 is '\\\\'"),
    "dotdot": ("a..b", "must not hold '..'"),
    "parent": ("..", "must start with a letter or digit"),
    "hidden": (".job", "must start with a letter or digit"),
    "option": ("-rf", "must start with a letter or digit"),
    "trailing-dot": ("job.", "must not end with '.'"),
    "trailing-space": ("job ", "must not end with ' '"),
    "empty": ("", "must not be empty"),
    "blank": ("   ", "must not be empty"),
    "bidi-override": ("job\u202egnp.exe", "character 4 is '\\u202e'"),
    "zero-width": ("jo\u200bb", "character 3 is '\\u200b'"),
    "quote": ("job\"x", "character 4 is '\"'"),
    "colon": ("c:job", "character 2 is ':'"),
    "tab": ("a\tb", "character 2 is '\\t'"),
    "line-separator": ("a\u2028b", "character 2 is '\\u2028'"),
    "decomposed": ("e\u0301", "must be in Unicode NFC form"),
    "too-long": ("é" * 65, f"must be at most {JOB_NAME_MAX_BYTES} bytes of UTF-8, got 130"),
    "too-long-ascii": ("a" * (JOB_NAME_MAX_BYTES + 1), f"got {JOB_NAME_MAX_BYTES + 1}"),
}


@pytest.mark.parametrize("name", LEGIT_NAMES)
def test_legitimate_job_names_are_accepted_and_round_trip(name: str) -> None:
    config = parse_toml(tomli_w.dumps({"job": {"name": name}}), JobConfig)
    assert config.job.name == name and parse_toml(dump_toml(config), JobConfig) == config


@pytest.mark.parametrize(("name", "why"), list(HOSTILE_NAMES.values()), ids=list(HOSTILE_NAMES))
def test_hostile_job_names_are_refused_naming_job_name(name: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_toml(tomli_w.dumps({"job": {"name": name}}), JobConfig)
    message = str(info.value)
    assert message.startswith("job.name: ") and why in message, message
    assert message.isprintable() and len(message) < 200, message  # the refusal itself injects nothing into a log


PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))
#: TOML-ish fragments, so generated texts reach the parser's deeper states and not only its first character.
FRAGMENTS = st.sampled_from(["[job]\n", "[dp]\n", "name = ", "rounds = ", "epsilon = ", "seed = ", "[[levels.cohorts]]\n",
                             "= ", "'", '"', "[", "]", "{", "}", ",", "\n", "inf", "nan", "-", "1e999", "0x", "9" * 30,
                             "\\u0000", "\x00", "é", "#", "true", "1979-05-27", "\r\n"])


@PROPERTY
@given(st.lists(FRAGMENTS | st.text(max_size=8), max_size=40).map("".join))
def test_any_text_is_a_job_or_a_one_line_config_error(text: str) -> None:
    try:
        config = parse_toml(text, JobConfig, "job config")
    except ConfigError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 400, str(exc)
    else:
        assert parse_toml(dump_toml(config), JobConfig) == config


@PROPERTY
@given(st.text(max_size=80) | st.sampled_from(LEGIT_NAMES))
def test_an_accepted_job_name_is_safe_in_logs_paths_and_lookups(name: str) -> None:
    if job_name_problem(name) is not None:
        return
    assert name.isprintable() and name == name.strip() and not name.startswith(("-", "."))
    assert "/" not in name and "\\" not in name and ".." not in name
    assert len(name.encode("utf-8")) <= JOB_NAME_MAX_BYTES
    assert parse_toml(tomli_w.dumps({"job": {"name": name}}), JobConfig).job.name == name
