"""The TOML codec: TOML text <-> frozen config dataclasses, and ``check``, the one validation helper.

Schema-agnostic, so the job schema and the process configs share one loader: ``from_mapping`` builds any
frozen dataclass from a mapping, coercing each value to its field's annotation and calling the dataclass's
``validate(prefix)``; an unknown key, a wrong type or a bad range raises ``ConfigError`` naming its dotted key
(``job.rounds``, ``levels.cohorts[0].members``).  CLI overrides are dotted keys applied before validation.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

from fedprompt.errors import ConfigError

T = TypeVar("T")


def check(ok: bool, key: str, message: str) -> None:
    """Raise ``ConfigError("<key>: <message>")`` unless ``ok``: every validation names its dotted key."""
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """``value`` as ``annotation`` (a config dataclass, tuple, float, int, bool or str); else name ``key``."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        check(isinstance(value, dict), key, f"must be a table, got {type(value).__name__}")
        return from_mapping(annotation, value, key)  # type: ignore[arg-type]
    if origin is tuple:
        (inner, _) = typing.get_args(annotation)
        check(isinstance(value, (list, tuple)), key, f"must be a list, got {type(value).__name__}")
        return tuple(_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{key}: unions are not supported in config")
    if annotation is float:
        check(isinstance(value, (int, float)) and not isinstance(value, bool), key, f"must be a number, got {value!r}")
        return float(value)
    if annotation is int:
        check(isinstance(value, int) and not isinstance(value, bool), key, f"must be an integer, got {value!r}")
        return value
    if annotation is bool:
        check(isinstance(value, bool), key, f"must be true or false, got {value!r}")
        return value
    if annotation is str:
        check(isinstance(value, str), key, f"must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {annotation!r}")


def from_mapping(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping: unknown keys, wrong types and bad ranges name their key."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"{where}: unknown key (allowed: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(prefix)
    return obj


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c = value`` in a nested mapping (CLI overrides), creating tables on the way."""
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        check(isinstance(child, dict), dotted, f"{part!r} is not a table")
        node = child
    node[leaf] = value


def parse_toml(
    text: str, cls: type[T], source: str = "<config>", overrides: dict[str, Any] | None = None
) -> T:
    """Parse TOML text into ``cls``, applying dotted ``overrides`` first; errors name the source or key."""
    return from_mapping(cls, toml_mapping(text, source, overrides))


def toml_mapping(text: str, source: str = "<config>", overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """TOML text as a mapping with dotted ``overrides`` applied; a syntax error names the source."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from exc
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    return data


def load_toml(path: str | Path, cls: type[T], overrides: dict[str, Any] | None = None) -> T:
    """Load and validate a TOML file into ``cls``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:  # a binary or Latin-1 file: TOML is UTF-8
        raise ConfigError(f"config {p} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                          "TOML files are UTF-8") from exc
    return parse_toml(text, cls, str(p), overrides)


def dump_toml(config: Any) -> str:
    """Serialise a config dataclass back to TOML (the job text the coordinator stores and hands out)."""
    return tomli_w.dumps(dataclasses.asdict(config))
