"""The three process configs: the coordinator's, a participant daemon's and a model service's.

Each process loads its own TOML file at start-up (``fedprompt coordinator|participant|model serve``), unlike
the job config, which travels between processes; a participant's config stays at its site.  They share
``_check_tls``: certificate keys are required unless ``insecure``, and forbidden with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fedprompt.config.codec import check, check_range
from fedprompt.config.placement import check_placement
from fedprompt.data.formats import DataFormat
from fedprompt.errors import ConfigError

#: URL schemes of the coordinator's store, and the backend each selects.
_STORE_SCHEMES = {"sqlite": "sqlite", "postgresql": "postgresql", "postgres": "postgresql"}


def store_target(url: str, key: str = "coordinator.store") -> tuple[str, str]:
    """A store URL as (backend, target): ``sqlite:///PATH`` gives ("sqlite", PATH) as SQLAlchemy reads it (a
    relative path after three slashes, an absolute one after four; ``:memory:`` for no file), and
    ``postgresql://…`` (or ``postgres://…``) gives ("postgresql", the URL, for libpq to read)."""
    scheme, sep, rest = url.partition("://")
    backend = _STORE_SCHEMES.get(scheme) if sep else None
    if backend == "postgresql":
        return backend, url
    if backend == "sqlite" and rest.startswith("/") and len(rest) > 1:
        return backend, rest[1:]
    shown = f"scheme {scheme!r}" if sep and backend is None else "no file path" if sep else "no scheme"
    raise ConfigError(f"{key}: must be sqlite:///PATH or postgresql://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE "
                      f"(empty: coordinator.sqlite in state_dir); got {shown}")


def _check_tls(prefix: str, insecure: bool, required: dict[str, str], optional: dict[str, str] | None = None) -> None:
    """Certificate keys are required with mTLS (the default) and all forbidden with ``insecure``."""
    if insecure:
        given = [f"{prefix}.{k}" for k, v in {**required, **(optional or {})}.items() if v]
        check(not given, f"{prefix}.insecure", f"cannot be combined with {', '.join(given)}")
        return
    for key, value in required.items():
        check(bool(value), f"{prefix}.{key}", "required for mTLS (or run with --insecure for local development only)")


def _check_metrics_listen(address: str, key: str) -> None:
    """A metrics endpoint is off (empty) or host:port with a port in [0, 65535] (0 picks a free one)."""
    if address:
        port = address.rpartition(":")[2]
        check(":" in address and port.isdigit() and int(port) <= 65535, key,
              f"must be host:port with a port in [0, 65535], or empty for none; got {address!r}")


@dataclass(frozen=True)
class CoordinatorSection:
    """The coordinator service: where it listens, where its state lives, its limits.

    Ranges: ``tick_s`` in [0.01, 10]; ``offline_after_s`` in (0, 86400] (a day without a heartbeat);
    ``upload_timeout_s`` in (0, 3600]; ``max_message_bytes`` in [64 KiB, 64 MiB]; ``rate_limit_per_s`` in
    (0, 1e6] and ``rate_limit_burst`` in [1, 1000000] (their tops effectively switch the limit off, as load
    tests do); ``max_concurrent_uploads`` in [1, 64]; ``max_uploads_total`` in [1, 100000];
    ``max_pending_calls`` in [100, 1000000]; ``connection_idle_s`` in [1, 86400]; ``shutdown_grace_s`` in [0, 600];
    ``metrics_listen`` empty or host:port; ``store`` empty or a URL that ``store_target`` reads; ``lease_ttl_s`` 0
    (no lease) or in [1, 600].
    """

    listen: str = "127.0.0.1:50051"
    state_dir: str = "coordinator-state"
    # Where jobs, rounds and global versions are kept: empty for ``coordinator.sqlite`` in ``state_dir``, else
    # ``sqlite:///PATH`` or ``postgresql://USER:PASSWORD@HOST:PORT/DATABASE`` (needs ``fedprompt[postgres]``).
    # Checkpoints stay in ``state_dir`` either way.
    store: str = ""
    # Failover: several replicas on one store, one active (``coordinator.lease``).  0 runs without a lease (one
    # coordinator); else the lease's time to live: a standby takes over this long after the active one stops
    # renewing.  ``replica`` names this one in the lease and the logs (empty: host:pid).
    lease_ttl_s: float = 0.0
    replica: str = ""
    insecure: bool = False
    tick_s: float = 0.25
    offline_after_s: float = 120.0
    upload_timeout_s: float = 120.0
    max_message_bytes: int = 4 * 1024 * 1024
    # mTLS (required unless ``insecure``): the coordinator's certificate and key, the federation CA whose
    # certificates clients must present, and the CA's revocation list (re-read whenever the file changes).
    ca_cert: str = ""
    cert: str = ""
    key: str = ""
    crl: str = ""
    # Per-identity limits: sustained calls per second, burst, and concurrent uploads.
    rate_limit_per_s: float = 20.0
    rate_limit_burst: int = 100
    max_concurrent_uploads: int = 2
    # Uploads in progress across all identities: each holds its payload's chunks until the stream ends, so this
    # bounds that memory however many certificates a stalling client holds.
    max_uploads_total: int = 1024
    # Calls arrived but not yet taken up by the server (gRPC's pending-request queue): beyond this many, and
    # beyond three times as many at once, gRPC cancels new calls (CANCELLED).  gRPC's own default, 1000, is
    # kept; a federation of more members meets bursts of about its size whenever a round opens or a version
    # is published (every waiting member's next call at once), so raise it to about the number of members.
    max_pending_calls: int = 1000
    # A connection with no call in progress for this long is closed (HTTP/2 GOAWAY); a participant's channel
    # reconnects at its next call.  Keepalive pings are not calls: they do not keep an idle connection open.
    connection_idle_s: float = 300.0
    shutdown_grace_s: float = 10.0
    # host:port of the Prometheus endpoint (``/metrics``, plain HTTP: bind it where only the scraper reaches it);
    # empty serves none.
    metrics_listen: str = ""

    @property
    def store_url(self) -> str:
        """The store's URL, with the default spelled out."""
        return self.store or f"sqlite:///{Path(self.state_dir) / 'coordinator.sqlite'}"

    def validate(self, prefix: str) -> None:
        _check_tls(prefix, self.insecure, {"ca_cert": self.ca_cert, "cert": self.cert, "key": self.key, "crl": self.crl})
        if self.store:
            store_target(self.store, f"{prefix}.store")
        check(self.lease_ttl_s == 0 or 1 <= self.lease_ttl_s <= 600, f"{prefix}.lease_ttl_s",
              f"must be 0 (no lease: a single coordinator) or in [1, 600] seconds, got {self.lease_ttl_s}")
        _check_metrics_listen(self.metrics_listen, f"{prefix}.metrics_listen")
        check_range(self.rate_limit_per_s, f"{prefix}.rate_limit_per_s", 0.0, 1e6, open_low=True)
        check_range(self.rate_limit_burst, f"{prefix}.rate_limit_burst", 1, 1_000_000)
        check(1 <= self.max_concurrent_uploads <= 64, f"{prefix}.max_concurrent_uploads", "must be in [1, 64]")
        check_range(self.max_uploads_total, f"{prefix}.max_uploads_total", 1, 100_000)
        check_range(self.max_pending_calls, f"{prefix}.max_pending_calls", 100, 1_000_000)
        check_range(self.connection_idle_s, f"{prefix}.connection_idle_s", 1.0, 86400.0, note="seconds")
        check(":" in self.listen, f"{prefix}.listen", f"must be host:port, got {self.listen!r}")
        check(0.01 <= self.tick_s <= 10, f"{prefix}.tick_s", "must be in [0.01, 10]")
        check_range(self.offline_after_s, f"{prefix}.offline_after_s", 0.0, 86400.0, open_low=True, note="seconds")
        check_range(self.upload_timeout_s, f"{prefix}.upload_timeout_s", 0.0, 3600.0, open_low=True, note="seconds")
        check(0 <= self.shutdown_grace_s <= 600, f"{prefix}.shutdown_grace_s", "must be in [0, 600] seconds")
        check(64 * 1024 <= self.max_message_bytes <= 64 * 1024 * 1024, f"{prefix}.max_message_bytes",
              "must be in [65536, 67108864]")


@dataclass(frozen=True)
class CoordinatorConfig:
    """A coordinator's config file: one ``[coordinator]`` table."""

    coordinator: CoordinatorSection = field(default_factory=CoordinatorSection)


@dataclass(frozen=True)
class ParticipantSection:
    """One institution's daemon: where the coordinator is, where its own data and state live.

    Ranges: ``threads`` in [1, 256]; ``retry_initial_s`` in (0, ``retry_max_s``] and ``retry_max_s`` in
    (0, 3600]; ``give_up_after_s`` in (0, 604800] (a week of an unreachable coordinator); ``rpc_timeout_s`` in
    (0, 3600]; ``heartbeat_s`` in [0.1, 3600].
    """

    # host:port, or several separated by commas (the replicas of a failover pair): the daemon uses one at a time
    # and moves to the next when it finds it UNAVAILABLE (``participant.grpc_link``).
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
    # mTLS: this site's certificate and key, and the federation CA that signed the coordinator's certificate.
    ca_cert: str = ""
    cert: str = ""
    key: str = ""
    # Connect to the coordinator by another name than its address (must be one of its certificate's SANs).
    server_name: str = ""
    # Plaintext, identity by ``name`` and unverified: local development only; excludes the certificate keys.
    insecure: bool = False
    heartbeat_s: float = 10.0
    # host:port of a query-only model service (``fedprompt model serve``); required by black-box jobs.
    model_service: str = ""
    # host:port of this daemon's Prometheus endpoint (``/metrics``, plain HTTP); empty serves none.
    metrics_listen: str = ""
    # How the site's files are read: columns, encoding, bad rows (``[participant.format]``).
    format: DataFormat = field(default_factory=DataFormat)
    # Where the frozen PLM runs: auto | cpu | cuda | cuda:N, and its precision: auto | float32 | bfloat16 |
    # float16 (auto: the GPU in bfloat16 when there is one, else the CPU in float32; trainable tensors stay float32).
    device: str = "auto"
    dtype: str = "auto"

    def validate(self, prefix: str) -> None:
        _check_tls(prefix, self.insecure, {"ca_cert": self.ca_cert, "cert": self.cert, "key": self.key},
                   {"server_name": self.server_name})
        check(not self.name or self.insecure, f"{prefix}.name",
              "is for --insecure only; with certificates the identity is the certificate's name")
        check(bool(self.job), f"{prefix}.job", "name the job to join")
        addresses = [a.strip() for a in self.coordinator.split(",")]
        check(all(":" in a for a in addresses), f"{prefix}.coordinator",
              f"must be host:port, or several separated by commas, got {self.coordinator[:200]!r}")
        check_placement(prefix, self.device, self.dtype)
        check(0 < self.rpc_timeout_s <= 3600, f"{prefix}.rpc_timeout_s", "must be in (0, 3600]")
        check(not self.model_service or ":" in self.model_service, f"{prefix}.model_service",
              f"must be host:port, got {self.model_service!r}")
        _check_metrics_listen(self.metrics_listen, f"{prefix}.metrics_listen")
        check(bool(self.data_dir), f"{prefix}.data_dir", "name the directory holding train.jsonl and test.jsonl")
        check(1 <= self.threads <= 256, f"{prefix}.threads", "must be in [1, 256]")
        check_range(self.retry_max_s, f"{prefix}.retry_max_s", 0.0, 3600.0, open_low=True, note="seconds")
        check(0 < self.retry_initial_s <= self.retry_max_s, f"{prefix}.retry_initial_s", "must be in (0, retry_max_s]")
        check_range(self.give_up_after_s, f"{prefix}.give_up_after_s", 0.0, 7 * 24 * 3600.0, open_low=True,
                    note="seconds")
        check(0.1 <= self.heartbeat_s <= 3600, f"{prefix}.heartbeat_s", "must be in [0.1, 3600] seconds")
        self.format.validate(f"{prefix}.format")


@dataclass(frozen=True)
class ParticipantConfig:
    """A participant daemon's config file: one ``[participant]`` table."""

    participant: ParticipantSection = field(default_factory=ParticipantSection)


@dataclass(frozen=True)
class ModelServiceSection:
    """A query-only model service: hosts one frozen PLM and scores texts under caller-supplied soft prompts.

    Callers send their institution's texts, so the service speaks mTLS by default: its own certificate and
    key, and the CA whose certificates it accepts from callers (the federation CA, or the institution's own).
    Every count is bounded in its ``validate`` (e.g. ``max_batch`` in [1, 4096], ``max_text_chars`` in
    [1, 1000000]).
    """

    listen: str = "127.0.0.1:50061"
    model: str = "builtin:minilm"
    kind: str = "auto"
    ca_cert: str = ""
    cert: str = ""
    key: str = ""
    insecure: bool = False
    threads: int = 1
    max_batch: int = 64
    max_prompt_tokens: int = 64
    max_length: int = 256
    max_text_chars: int = 20_000
    max_tasks: int = 8
    #: Texts per forward pass: a larger query is scored in chunks, so activation memory stays bounded.
    forward_batch: int = 16
    # Where the exported graph runs (onnxruntime's CUDA provider for cuda[:N], when installed); the graph is
    # exported in float32, so ``dtype`` is auto or float32.
    device: str = "auto"
    dtype: str = "auto"

    def validate(self, prefix: str) -> None:
        check(":" in self.listen, f"{prefix}.listen", f"must be host:port, got {self.listen!r}")
        check(self.kind in ("auto", "encoder", "causal"), f"{prefix}.kind", "must be 'auto', 'encoder' or 'causal'")
        check(1 <= self.threads <= 256, f"{prefix}.threads", "must be in [1, 256]")
        check(1 <= self.max_batch <= 4096, f"{prefix}.max_batch", "must be in [1, 4096]")
        check(1 <= self.max_prompt_tokens <= 512, f"{prefix}.max_prompt_tokens", "must be in [1, 512]")
        check(8 <= self.max_length <= 4096, f"{prefix}.max_length", "must be in [8, 4096]")
        check(1 <= self.max_text_chars <= 1_000_000, f"{prefix}.max_text_chars", "must be in [1, 1000000]")
        check(1 <= self.max_tasks <= 1024, f"{prefix}.max_tasks", "must be in [1, 1024]")
        check(1 <= self.forward_batch <= 4096, f"{prefix}.forward_batch", "must be in [1, 4096]")
        check_placement(prefix, self.device, self.dtype)
        check(self.dtype in ("auto", "float32"), f"{prefix}.dtype",
              f"the model service runs an ONNX graph exported in float32; use 'auto' or 'float32', got {self.dtype!r}")
        _check_tls(prefix, self.insecure, {"ca_cert": self.ca_cert, "cert": self.cert, "key": self.key})


@dataclass(frozen=True)
class ModelServiceConfig:
    """A model service's config file: one ``[model_service]`` table."""

    model_service: ModelServiceSection = field(default_factory=ModelServiceSection)
