"""The TOML codec: TOML text <-> frozen config dataclasses, and ``check``, the one validation helper.

Schema-agnostic, so the job schema and the process configs share one loader: ``from_mapping`` builds any
frozen dataclass from a mapping, coercing each value to its field's annotation and calling the dataclass's
``validate(prefix)``; an unknown key, a wrong type or a bad range raises ``ConfigError`` naming its dotted key
(``job.rounds``, ``levels.cohorts[0].members``).  CLI overrides are dotted keys applied before validation.

Hostile text is refused here, before any schema sees it, for every source alike (the coordinator's
``CreateJob``, a participant's job description, a file named on the command line): a text over
``MAX_TOML_BYTES`` is not parsed, and whatever ``tomllib`` raises on bad text (syntax, duplicate keys,
nesting that exhausts the recursion limit, an integer of over 4300 digits) becomes a one-line
``ConfigError`` naming the source and, where known, the line.  Numbers are checked twice: here, a
TOML integer must fit 64 bits (the TOML specification's range) and a float must not be NaN, nor
infinite unless its field carries ``INF_ALLOWED``; then each section's ``validate`` checks its
finite range with ``check_range``, which names the key and the range.
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

from fedprompt.errors import ConfigError
from fedprompt.files import read_text

T = TypeVar("T")

#: The largest TOML text parsed, in bytes of UTF-8, whatever its source.  A real job is a few KiB, and an
#: allow-list of 10,000 identities about 400 KiB; anything larger is refused before ``tomllib`` sees it.
MAX_TOML_BYTES = 1024 * 1024
#: TOML integers are signed 64-bit (the specification asks parsers to refuse others; ``tomllib`` does not).
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
#: ``field(metadata=INF_ALLOWED)`` marks a float whose docstring gives ``inf`` a meaning (e.g. "no budget"); any
#: other float field refuses ``inf`` and ``-inf`` at load.  NaN is refused everywhere.
INF_ALLOWED: typing.Mapping[str, bool] = types.MappingProxyType({"inf_allowed": True})

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlong, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxlevel = 40, 4, 4, 4, 2


def show(value: object) -> str:
    """``repr(value)`` cut short (long strings, huge integers, deep lists): error messages stay one short line."""
    return _REPR.repr(value)


def check(ok: bool, key: str, message: str) -> None:
    """Raise ``ConfigError("<key>: <message>")`` unless ``ok``: every validation names its dotted key."""
    if not ok:
        raise ConfigError(f"{key}: {message}")


def check_range(value: float, key: str, low: float, high: float, *, open_low: bool = False, note: str = "") -> None:
    """``check`` that ``value`` lies in ``[low, high]`` (``(low, high]`` with ``open_low``), naming the range and
    ``note`` (what a special value means); NaN is never in range."""
    inside = (low < value if open_low else low <= value) and value <= high
    bounds = f"{'(' if open_low else '['}{_bound(low)}, {_bound(high)}]"
    check(inside, key, f"must be in {bounds}{f' ({note})' if note else ''}, got {show(value)}")


def _bound(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """``value`` as ``annotation`` (a config dataclass, tuple, float, int, bool or str); else name ``key``.
    Integers must fit 64 bits (floats are checked for NaN and infinity by ``from_mapping``)."""
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
        check(isinstance(value, (int, float)) and not isinstance(value, bool), key, f"must be a number, got {show(value)}")
        try:
            return float(value)
        except OverflowError:  # an integer beyond float's range
            raise ConfigError(f"{key}: must be a finite number, got {show(value)}") from None
    if annotation is int:
        check(isinstance(value, int) and not isinstance(value, bool), key, f"must be an integer, got {show(value)}")
        check(INT64_MIN <= value <= INT64_MAX, key, f"must be a 64-bit integer, got {show(value)}")
        return value
    if annotation is bool:
        check(isinstance(value, bool), key, f"must be true or false, got {show(value)}")
        return value
    if annotation is str:
        check(isinstance(value, str), key, f"must be a string, got {show(value)}")
        return value
    raise ConfigError(f"{key}: unsupported type {annotation!r}")


def from_mapping(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping: unknown keys, wrong types and bad ranges name their key."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"{where}: unknown key (allowed: {', '.join(sorted(fields))})")
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(prefix)  # first, so that a field's own range check names its range
    for k, v in kwargs.items():  # then the backstop: NaN nowhere, infinity only where a field documents it
        if isinstance(v, float) and not math.isfinite(v):
            check(math.isinf(v) and bool(fields[k].metadata.get("inf_allowed")), f"{prefix}.{k}" if prefix else k,
                  f"must be a finite number, got {v}")
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
    """TOML text as a mapping with dotted ``overrides`` applied; bad text names the source (and line)."""
    data = _parse(text, source)
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    return data


def _parse(text: str, source: str) -> dict[str, Any]:
    """``tomllib.loads`` for text of at most ``MAX_TOML_BYTES``; anything it raises becomes a ``ConfigError``."""
    check(isinstance(text, str), source, f"TOML must be text, got {type(text).__name__}")
    # a character is at least one byte: a text of too many characters is refused without encoding it
    check(len(text) <= MAX_TOML_BYTES, source,
          f"TOML text of {len(text)} characters exceeds the limit of {MAX_TOML_BYTES} bytes")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:  # only a lone surrogate, which no UTF-8 source can hold
        raise ConfigError(f"{source}: not UTF-8 text (line {_line(text, exc.start)} has a lone surrogate)") from None
    check(size <= MAX_TOML_BYTES, source, f"TOML text of {size} bytes exceeds the limit of {MAX_TOML_BYTES} bytes")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # its message ends "(at line L, column C)" or "(at end of document)"
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid TOML: arrays or inline tables nested too deeply") from None
    except ValueError:  # int() refuses over 4300 digits (CVE-2020-10735); tomllib lets that escape
        digits = max(re.finditer(r"[0-9A-Fa-f_]+", text), key=lambda m: m.end() - m.start(), default=None)
        where = f" (at line {_line(text, digits.start())})" if digits else ""
        raise ConfigError(f"{source}: invalid TOML: an integer has too many digits{where}") from None


def _line(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def load_toml(path: str | Path, cls: type[T], overrides: dict[str, Any] | None = None) -> T:
    """Load and validate a TOML file into ``cls``."""
    return parse_toml(read_toml_text(path), cls, str(path), overrides)


def read_toml_text(path: str | Path, what: str = "config") -> str:
    """A TOML file's text, read no further than ``MAX_TOML_BYTES`` and decoded as UTF-8; else ``FileError`` (a
    ``ConfigError``) naming the file."""
    return read_text(path, what, MAX_TOML_BYTES)


def dump_toml(config: Any) -> str:
    """Serialise a config dataclass back to TOML (the job text the coordinator stores and hands out); a text
    the loader would refuse as too large is refused here, so whatever is dumped loads again."""
    text = tomli_w.dumps(dataclasses.asdict(config))
    size = len(text.encode("utf-8"))
    check(size <= MAX_TOML_BYTES, "config", f"its TOML text of {size} bytes exceeds the limit of {MAX_TOML_BYTES}")
    return text
