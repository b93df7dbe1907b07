"""Configuration: TOML -> frozen dataclasses, validated at load with the offending key named.

A job config is written by an admin and sent to the coordinator; the coordinator hands the same text to
participants so both sides build the identical model and task.  A participant config stays at its site.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

from fedprompt.errors import ConfigError

T = TypeVar("T")


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


@dataclass(frozen=True)
class JobSection:
    """How the federation runs: rounds, selection and aggregation."""

    name: str = "job"
    rounds: int = 5
    participants_per_round: int = 3
    min_participants: int = 2
    round_deadline_s: float = 600.0
    aggregator: str = "fedavg"
    seed: int = 0

    def validate(self, prefix: str) -> None:
        _check(bool(self.name.strip()), f"{prefix}.name", "must not be empty")
        _check(1 <= self.rounds <= 100_000, f"{prefix}.rounds", f"must be in [1, 100000], got {self.rounds}")
        _check(self.participants_per_round >= 1, f"{prefix}.participants_per_round", "must be >= 1")
        _check(
            1 <= self.min_participants <= self.participants_per_round,
            f"{prefix}.min_participants",
            f"must be in [1, participants_per_round={self.participants_per_round}], got {self.min_participants}",
        )
        _check(self.round_deadline_s > 0, f"{prefix}.round_deadline_s", "must be > 0 seconds")


@dataclass(frozen=True)
class ModelSection:
    """Which frozen backbone, and how big the soft prompt is."""

    path: str = "builtin:minilm"
    kind: str = "auto"
    prompt_length: int = 16
    max_length: int = 64
    # Encoders score labels with a cosine head initialised from the label descriptions; false freezes it,
    # so only the prompt is tuned and exchanged (black-box jobs require this: a query-only model has no head).
    train_head: bool = True

    def validate(self, prefix: str) -> None:
        _check(self.kind in ("auto", "encoder", "causal"), f"{prefix}.kind", "must be 'auto', 'encoder' or 'causal'")
        _check(1 <= self.prompt_length <= 512, f"{prefix}.prompt_length", "must be in [1, 512]")
        _check(8 <= self.max_length <= 4096, f"{prefix}.max_length", "must be in [8, 4096]")


@dataclass(frozen=True)
class TaskSection:
    """The classification task: label names as they appear in the data, and the words that describe them."""

    label_names: tuple[str, ...] = ("rotten", "fresh")
    label_words: tuple[str, ...] = ("a negative review", "a positive review")
    template: str = "{text}"

    def validate(self, prefix: str) -> None:
        _check(len(self.label_names) >= 2, f"{prefix}.label_names", "need at least two labels")
        _check(len(set(self.label_names)) == len(self.label_names), f"{prefix}.label_names", "must be distinct")
        _check(
            len(self.label_words) == len(self.label_names),
            f"{prefix}.label_words",
            f"need one word per label ({len(self.label_names)}), got {len(self.label_words)}",
        )
        _check("{text}" in self.template, f"{prefix}.template", "must contain the placeholder {text}")


@dataclass(frozen=True)
class TrainSection:
    """Local training at each participant, per round."""

    local_epochs: int = 1
    max_steps: int = 0
    batch_size: int = 16
    lr: float = 0.01

    def validate(self, prefix: str) -> None:
        _check(1 <= self.local_epochs <= 1000, f"{prefix}.local_epochs", "must be in [1, 1000]")
        _check(self.max_steps >= 0, f"{prefix}.max_steps", "must be >= 0 (0 means no cap)")
        _check(1 <= self.batch_size <= 4096, f"{prefix}.batch_size", "must be in [1, 4096]")
        _check(0 < self.lr <= 10, f"{prefix}.lr", f"must be in (0, 10], got {self.lr}")


BLACKBOX_AGGREGATORS = ("fedbpt", "fedbpt_linear")


@dataclass(frozen=True)
class BlackboxSection:
    """Gradient-free local search (FedBPT, Sun et al. 2023): CMA-ES over z in R^d, prompt = A z + p0.

    Participants only query a model service; ``intrinsic_dim`` d (BBT's 500) sets the exchanged size d + 1
    (the search mean and its step size), ``sigma`` the initial CMA-ES step size (BBT's sigma_z, which also
    scales the projection A), ``population`` candidates per iteration, ``local_iterations`` CMA-ES
    iterations per round and ``batch_size`` training texts scored per candidate.
    """

    enabled: bool = False
    intrinsic_dim: int = 500
    population: int = 20
    sigma: float = 1.0
    local_iterations: int = 8
    batch_size: int = 32

    def validate(self, prefix: str) -> None:
        _check(1 <= self.intrinsic_dim <= 100_000, f"{prefix}.intrinsic_dim", "must be in [1, 100000]")
        _check(2 <= self.population <= 10_000, f"{prefix}.population", "must be in [2, 10000]")
        _check(0 < self.sigma <= 100, f"{prefix}.sigma", f"must be in (0, 100], got {self.sigma}")
        _check(1 <= self.local_iterations <= 100_000, f"{prefix}.local_iterations", "must be in [1, 100000]")
        _check(1 <= self.batch_size <= 4096, f"{prefix}.batch_size", "must be in [1, 4096]")


@dataclass(frozen=True)
class JobConfig:
    """Everything a job needs, shared verbatim by coordinator and participants."""

    job: JobSection = field(default_factory=JobSection)
    model: ModelSection = field(default_factory=ModelSection)
    task: TaskSection = field(default_factory=TaskSection)
    train: TrainSection = field(default_factory=TrainSection)
    blackbox: BlackboxSection = field(default_factory=BlackboxSection)

    @property
    def mode(self) -> str:
        """``blackbox`` (query-only, gradient-free participants) or ``gradient`` (local backpropagation)."""
        return "blackbox" if self.blackbox.enabled else "gradient"

    def validate(self, prefix: str) -> None:
        """Checks across sections: a black-box job exchanges a search state, not a prompt."""
        if not self.blackbox.enabled:
            _check(self.job.aggregator not in BLACKBOX_AGGREGATORS, "job.aggregator",
                   f"{self.job.aggregator!r} aggregates black-box search states; set blackbox.enabled = true")
            return
        _check(self.job.aggregator in BLACKBOX_AGGREGATORS, "job.aggregator",
               f"a black-box job aggregates search states: choose one of {list(BLACKBOX_AGGREGATORS)}")
        _check(not self.model.train_head, "model.train_head",
               "must be false in a black-box job: the model service scores with the frozen label head")


@dataclass(frozen=True)
class ParticipantSection:
    """One institution's daemon: where the coordinator is, where its own data and state live."""

    coordinator: str = "127.0.0.1:50051"
    job: str = ""
    name: str = ""
    data_dir: str = ""
    state_dir: str = ""
    threads: int = 1
    retry_initial_s: float = 0.5
    retry_max_s: float = 10.0
    give_up_after_s: float = 120.0
    rpc_timeout_s: float = 60.0
    # host:port of a query-only model service (``fedprompt model serve``); required by black-box jobs.
    model_service: str = ""

    def validate(self, prefix: str) -> None:
        _check(bool(self.job), f"{prefix}.job", "name the job to join")
        _check(0 < self.rpc_timeout_s <= 3600, f"{prefix}.rpc_timeout_s", "must be in (0, 3600]")
        _check(not self.model_service or ":" in self.model_service, f"{prefix}.model_service",
               f"must be host:port, got {self.model_service!r}")
        _check(bool(self.data_dir), f"{prefix}.data_dir", "name the directory holding train.jsonl and test.jsonl")
        _check(1 <= self.threads <= 256, f"{prefix}.threads", "must be in [1, 256]")
        _check(0 < self.retry_initial_s <= self.retry_max_s, f"{prefix}.retry_initial_s", "must be in (0, retry_max_s]")
        _check(self.give_up_after_s > 0, f"{prefix}.give_up_after_s", "must be > 0")


@dataclass(frozen=True)
class ParticipantConfig:
    participant: ParticipantSection = field(default_factory=ParticipantSection)


@dataclass(frozen=True)
class CoordinatorSection:
    """The coordinator service: where it listens, where its state lives, its limits."""

    listen: str = "127.0.0.1:50051"
    state_dir: str = "coordinator-state"
    insecure: bool = False
    tick_s: float = 0.25
    offline_after_s: float = 120.0
    upload_timeout_s: float = 120.0
    max_message_bytes: int = 4 * 1024 * 1024

    def validate(self, prefix: str) -> None:
        _check(":" in self.listen, f"{prefix}.listen", f"must be host:port, got {self.listen!r}")
        _check(0.01 <= self.tick_s <= 10, f"{prefix}.tick_s", "must be in [0.01, 10]")
        _check(self.offline_after_s > 0, f"{prefix}.offline_after_s", "must be > 0")
        _check(self.upload_timeout_s > 0, f"{prefix}.upload_timeout_s", "must be > 0")
        _check(64 * 1024 <= self.max_message_bytes <= 64 * 1024 * 1024, f"{prefix}.max_message_bytes",
               "must be in [65536, 67108864]")


@dataclass(frozen=True)
class CoordinatorConfig:
    coordinator: CoordinatorSection = field(default_factory=CoordinatorSection)


@dataclass(frozen=True)
class ModelServiceSection:
    """A query-only model service: hosts one frozen PLM and scores texts under caller-supplied soft prompts."""

    listen: str = "127.0.0.1:50061"
    model: str = "builtin:minilm"
    kind: str = "auto"
    insecure: bool = False
    threads: int = 1
    max_batch: int = 64
    max_prompt_tokens: int = 64
    max_length: int = 256
    max_text_chars: int = 20_000
    max_tasks: int = 8

    def validate(self, prefix: str) -> None:
        _check(":" in self.listen, f"{prefix}.listen", f"must be host:port, got {self.listen!r}")
        _check(self.kind in ("auto", "encoder", "causal"), f"{prefix}.kind", "must be 'auto', 'encoder' or 'causal'")
        _check(1 <= self.threads <= 256, f"{prefix}.threads", "must be in [1, 256]")
        _check(1 <= self.max_batch <= 4096, f"{prefix}.max_batch", "must be in [1, 4096]")
        _check(1 <= self.max_prompt_tokens <= 512, f"{prefix}.max_prompt_tokens", "must be in [1, 512]")
        _check(8 <= self.max_length <= 4096, f"{prefix}.max_length", "must be in [8, 4096]")
        _check(1 <= self.max_text_chars <= 1_000_000, f"{prefix}.max_text_chars", "must be in [1, 1000000]")
        _check(1 <= self.max_tasks <= 1024, f"{prefix}.max_tasks", "must be in [1, 1024]")


@dataclass(frozen=True)
class ModelServiceConfig:
    model_service: ModelServiceSection = field(default_factory=ModelServiceSection)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        _check(isinstance(value, dict), key, f"must be a table, got {type(value).__name__}")
        return from_mapping(annotation, value, key)  # type: ignore[arg-type]
    if origin is tuple:
        (inner, _) = typing.get_args(annotation)
        _check(isinstance(value, (list, tuple)), key, f"must be a list, got {type(value).__name__}")
        return tuple(_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{key}: unions are not supported in config")
    if annotation is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key, f"must be a number, got {value!r}")
        return float(value)
    if annotation is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, f"must be an integer, got {value!r}")
        return value
    if annotation is bool:
        _check(isinstance(value, bool), key, f"must be true or false, got {value!r}")
        return value
    if annotation is str:
        _check(isinstance(value, str), key, f"must be a string, got {value!r}")
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
        _check(isinstance(child, dict), dotted, f"{part!r} is not a table")
        node = child
    node[leaf] = value


def parse_toml(
    text: str, cls: type[T], source: str = "<config>", overrides: dict[str, Any] | None = None
) -> T:
    """Parse TOML text into ``cls``, applying dotted ``overrides`` first; errors name the source or key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from exc
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    return from_mapping(cls, data)


def load_toml(path: str | Path, cls: type[T], overrides: dict[str, Any] | None = None) -> T:
    """Load and validate a TOML file into ``cls``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc.strerror}") from exc
    return parse_toml(text, cls, str(p), overrides)


def dump_toml(config: Any) -> str:
    """Serialise a config dataclass back to TOML (the job text the coordinator stores and hands out)."""
    return tomli_w.dumps(dataclasses.asdict(config))
