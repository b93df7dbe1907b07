"""Configuration: TOML -> frozen dataclasses, validated at load with the offending key named.

A job config is written by an admin and sent to the coordinator; the coordinator hands the same text to
participants so both sides build the identical model and task.  A participant config stays at its site.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import tomli_w

from fedprompt.crypto.ckks import CkksParams
from fedprompt.crypto.errors import ParameterError
from fedprompt.crypto.gram import gram_params
from fedprompt.errors import ConfigError

T = TypeVar("T")

# A caller's identity: certificate names ("participant:hospital-a") or insecure-mode names ("site-0").
IDENTITY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")


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
    # Who may join: participant identities (certificate names such as "participant:hospital-a"), or "*" for
    # any participant the coordinator authenticates.  Empty (the default) admits nobody: the coordinator
    # refuses to create such a job, so enrollment is always an explicit decision of the admin.
    allowed_participants: tuple[str, ...] = ()

    def validate(self, prefix: str) -> None:
        _check(bool(self.name.strip()), f"{prefix}.name", "must not be empty")
        for i, who in enumerate(self.allowed_participants):
            _check(who == "*" or bool(IDENTITY.match(who)), f"{prefix}.allowed_participants[{i}]",
                   f"{who[:40]!r} is neither '*' nor an identity (letters, digits and ._:@-, at most 128)")
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
    """Local training at each participant, per round.

    ``physical_batch_size`` bounds memory only: a batch larger than it runs as several forward/backward
    passes whose gradients add up to the batch's (measured: DP-SGD at an expected batch of 256 in one pass
    peaked at 7.3 GB per MiniLM participant).  It changes no result beyond float rounding.
    """

    local_epochs: int = 1
    max_steps: int = 0
    batch_size: int = 16
    lr: float = 0.01
    physical_batch_size: int = 32

    def validate(self, prefix: str) -> None:
        _check(1 <= self.local_epochs <= 1000, f"{prefix}.local_epochs", "must be in [1, 1000]")
        _check(self.max_steps >= 0, f"{prefix}.max_steps", "must be >= 0 (0 means no cap)")
        _check(1 <= self.batch_size <= 4096, f"{prefix}.batch_size", "must be in [1, 4096]")
        _check(1 <= self.physical_batch_size <= 4096, f"{prefix}.physical_batch_size", "must be in [1, 4096]")
        _check(0 < self.lr <= 10, f"{prefix}.lr", f"must be in (0, 10], got {self.lr}")


ACCOUNTANTS = ("rdp", "prv")


@dataclass(frozen=True)
class DPSection:
    """Differential privacy (off unless ``enabled``).

    Record level: DP-SGD at every participant (Abadi et al., "Deep Learning with Differential Privacy", 2016)
    with Poisson sampling, per-example clipping to ``max_grad_norm`` and Gaussian noise; ``noise_multiplier``
    0 means "calibrate it so the planned rounds spend exactly ``epsilon``".  ``delta`` 0 means 1/(10 n) of
    the site's n training examples.  A participant refuses to train once a round would exceed ``epsilon``.

    Participant level (on when ``participant_noise_multiplier`` > 0): each update is clipped to
    ``update_clip`` and carries a share of Gaussian noise so the sum over ``job.min_participants`` updates
    holds N(0, sigma^2 C^2) (distributed DP, as in DP-FedAvg: McMahan et al., "Learning Differentially
    Private Recurrent Language Models", 2018).  The job stops before exceeding ``participant_epsilon``.
    """

    enabled: bool = False
    epsilon: float = 8.0
    delta: float = 0.0
    noise_multiplier: float = 0.0
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    participant_noise_multiplier: float = 0.0
    update_clip: float = 1.0
    participant_epsilon: float = math.inf
    participant_delta: float = 1e-3

    @property
    def participant_level(self) -> bool:
        return self.enabled and self.participant_noise_multiplier > 0

    def validate(self, prefix: str) -> None:
        _check(self.epsilon > 0, f"{prefix}.epsilon", f"must be > 0 (inf allowed), got {self.epsilon}")
        _check(0 <= self.delta < 1, f"{prefix}.delta", f"must be in [0, 1) (0 = 1/(10 n)), got {self.delta}")
        _check(0 <= self.noise_multiplier < math.inf, f"{prefix}.noise_multiplier",
               f"must be in [0, inf) (0 = calibrate from epsilon), got {self.noise_multiplier}")
        _check(self.noise_multiplier > 0 or math.isfinite(self.epsilon), f"{prefix}.epsilon",
               "must be finite when noise_multiplier = 0 (the noise is calibrated from it)")
        _check(0 < self.max_grad_norm < math.inf, f"{prefix}.max_grad_norm",
               f"must be in (0, inf), got {self.max_grad_norm}")
        _check(self.accountant in ACCOUNTANTS, f"{prefix}.accountant",
               f"must be one of {', '.join(ACCOUNTANTS)}, got {self.accountant!r}")
        _check(0 <= self.participant_noise_multiplier < math.inf, f"{prefix}.participant_noise_multiplier",
               f"must be in [0, inf) (0 = no participant-level noise), got {self.participant_noise_multiplier}")
        _check(0 < self.update_clip < math.inf, f"{prefix}.update_clip", f"must be in (0, inf), got {self.update_clip}")
        _check(self.participant_epsilon > 0, f"{prefix}.participant_epsilon",
               f"must be > 0 (inf = no budget), got {self.participant_epsilon}")
        _check(0 < self.participant_delta < 1, f"{prefix}.participant_delta",
               f"must be in (0, 1), got {self.participant_delta}")


@dataclass(frozen=True)
class AugmentSection:
    """Pseudo-label augmentation of few-shot sites (AUG-FedPrompt; Cai et al. 2023). Off by default.

    After ``warmup_rounds`` rounds on labelled data only, each participant labels its unlabelled pool (at
    most ``max_unlabelled`` examples, 0 = all) with the current global prompt, keeps predictions whose
    confidence is at least ``threshold``, at most ``per_class_cap`` per class (and, with ``balance``, no
    more per class than the rarest confidently predicted class), and trains on labelled + pseudo-labelled
    examples.  Pseudo-labels are recomputed every round.  With ``gate`` (on by default) a site skips a
    round's pseudo-labelling when the global prompt does not beat the majority class on the site's own
    labelled examples: a prompt worse than that would only teach its errors back to itself.
    """

    enabled: bool = False
    warmup_rounds: int = 1
    threshold: float = 0.9
    per_class_cap: int = 64
    balance: bool = True
    max_unlabelled: int = 0
    gate: bool = True

    def validate(self, prefix: str) -> None:
        _check(0 <= self.warmup_rounds <= 100_000, f"{prefix}.warmup_rounds", "must be in [0, 100000]")
        _check(0 < self.threshold <= 1, f"{prefix}.threshold", f"must be in (0, 1], got {self.threshold}")
        _check(1 <= self.per_class_cap <= 1_000_000, f"{prefix}.per_class_cap", "must be in [1, 1000000]")
        _check(self.max_unlabelled >= 0, f"{prefix}.max_unlabelled", "must be >= 0 (0 means the whole pool)")


@dataclass(frozen=True)
class HESection:
    """Homomorphic-encrypted secure aggregation (CKKS): the coordinator only ever adds ciphertexts.

    ``dealer`` names the participant that creates the job's keys (default: the first to join).
    """

    enabled: bool = False
    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: tuple[int, ...] = (59, 16)
    scale_bits: int = 30
    max_summands: int = 1000
    dealer: str = ""

    def validate(self, prefix: str) -> None:
        try:
            self.params().check(prefix)
        except ParameterError as exc:
            raise ConfigError(str(exc)) from exc

    def params(self) -> CkksParams:
        """The CKKS parameters these settings describe (``crypto.ckks.CkksParams``)."""
        return CkksParams(self.poly_modulus_degree, self.coeff_mod_bit_sizes, self.scale_bits, self.max_summands)


#: Defences that decide from the Gram matrix of the updates alone, and so also run on encrypted updates.
GRAM_AGGREGATORS = ("norm_bound", "krum", "multi_krum", "foolsgold")


@dataclass(frozen=True)
class RobustSection:
    """Robust aggregation: the assumed bound on malicious updates per round, defence knobs, and quarantine.

    Used only by the robust aggregators (``job.aggregator`` = norm_bound, median, trimmed_mean, krum,
    multi_krum, foolsgold); FedAvg ignores it.
    """

    max_malicious: int = 1
    norm_factor: float = 2.0
    multi_krum_keep: int = 0
    quarantine_after: int = 3

    def validate(self, prefix: str) -> None:
        _check(self.max_malicious >= 0, f"{prefix}.max_malicious", f"must be >= 0, got {self.max_malicious}")
        _check(1 < self.norm_factor <= 1000, f"{prefix}.norm_factor", f"must be in (1, 1000], got {self.norm_factor}")
        _check(self.multi_krum_keep >= 0, f"{prefix}.multi_krum_keep", "must be >= 0 (0 keeps n - max_malicious)")
        _check(self.quarantine_after >= 0, f"{prefix}.quarantine_after",
               "must be >= 0 (consecutive rejected rounds before quarantine; 0 never quarantines)")
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


COHORT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
COHORT_SOURCES = ("admin", "discover")
#: Under HE a cohort's expert sum is published only with at least this many updates, so no single one shows.
MIN_HE_COHORT = 2


@dataclass(frozen=True)
class CohortSpec:
    """One admin-given cohort of the expert level (e.g. a domain such as finance): its name and members."""

    name: str = ""
    members: tuple[str, ...] = ()

    def validate(self, prefix: str) -> None:
        _check(bool(COHORT_NAME.match(self.name)), f"{prefix}.name",
               f"{self.name[:40]!r} must be 1-64 letters, digits or ._- starting with a letter or digit")
        _check(bool(self.members), f"{prefix}.members", "a cohort needs at least one member")
        for i, who in enumerate(self.members):
            _check(bool(IDENTITY.match(who)), f"{prefix}.members[{i}]", f"{who[:40]!r} is not a participant identity")
        _check(len(set(self.members)) == len(self.members), f"{prefix}.members", "lists a member twice")


@dataclass(frozen=True)
class LevelsSection:
    """Three prompt levels (PLMM; see ``fedprompt.wire.levels``): the prompt a participant uses is a **global**
    prompt (aggregated over everyone), an **expert** prompt (aggregated within the participant's cohort) and
    a **personal** prompt (trained locally, never uploaded), concatenated in that order.  Off by default.

    With levels on, ``model.prompt_length`` must equal the three token counts' sum.  Cohorts come from the
    admin (``cohorts_from = "admin"`` and ``[[levels.cohorts]]`` tables) or are discovered by the coordinator
    (``"discover"``): after round ``discover_round`` it clusters that round's updates by similarity into
    ``num_cohorts`` cohorts; under HE from the encrypted Gram matrix (``JobConfig.encrypted_discovery``).
    """

    enabled: bool = False
    global_tokens: int = 8
    expert_tokens: int = 4
    personal_tokens: int = 4
    cohorts_from: str = "admin"
    cohorts: tuple[CohortSpec, ...] = ()
    num_cohorts: int = 2
    discover_round: int = 1

    @property
    def total_tokens(self) -> int:
        return self.global_tokens + self.expert_tokens + self.personal_tokens

    def validate(self, prefix: str) -> None:
        _check(1 <= self.global_tokens <= 512, f"{prefix}.global_tokens", f"must be in [1, 512], got {self.global_tokens}")
        _check(0 <= self.expert_tokens <= 512, f"{prefix}.expert_tokens",
               f"must be in [0, 512] (0 = no expert level), got {self.expert_tokens}")
        _check(0 <= self.personal_tokens <= 512, f"{prefix}.personal_tokens",
               f"must be in [0, 512] (0 = no personal level), got {self.personal_tokens}")
        _check(self.total_tokens <= 512, f"{prefix}.personal_tokens", "the three levels together exceed 512 tokens")
        _check(self.cohorts_from in COHORT_SOURCES, f"{prefix}.cohorts_from",
               f"must be one of {', '.join(COHORT_SOURCES)}, got {self.cohorts_from!r}")
        if self.expert_tokens == 0:
            _check(not self.cohorts, f"{prefix}.cohorts", "cohorts need an expert level (expert_tokens > 0)")
            return
        if self.cohorts_from == "discover":
            _check(not self.cohorts, f"{prefix}.cohorts", 'must be empty with cohorts_from = "discover"')
            _check(2 <= self.num_cohorts <= 64, f"{prefix}.num_cohorts", f"must be in [2, 64], got {self.num_cohorts}")
            _check(self.discover_round >= 1, f"{prefix}.discover_round", f"must be >= 1, got {self.discover_round}")
        names = [c.name for c in self.cohorts]
        _check(len(set(names)) == len(names), f"{prefix}.cohorts", "cohort names must be distinct")
        seen: dict[str, str] = {}
        for i, cohort in enumerate(self.cohorts):
            for who in cohort.members:
                _check(who not in seen, f"{prefix}.cohorts[{i}].members",
                       f"{who} is already in cohort {seen.get(who)!r}; a participant belongs to one cohort")
                seen[who] = cohort.name

    def check_job(self, config: JobConfig) -> None:
        """Checks against the rest of the job (called by ``JobConfig.validate`` when levels are on)."""
        _check(config.model.prompt_length == self.total_tokens, "model.prompt_length",
               f"must equal levels.global_tokens + expert_tokens + personal_tokens = {self.total_tokens} "
               f"when levels.enabled, got {config.model.prompt_length}")
        _check(not config.dp.participant_level, "dp.participant_noise_multiplier",
               "participant-level noise is calibrated for sums of >= job.min_participants updates; a cohort's "
               "expert sum has fewer, so it cannot be combined with levels (use record-level DP)")
        if self.expert_tokens == 0:
            return
        if self.cohorts_from == "discover":
            _check(self.discover_round < config.job.rounds, "levels.discover_round",
                   f"must be < job.rounds={config.job.rounds}, or no round would use the discovered cohorts")
        allowed = config.job.allowed_participants
        for i, cohort in enumerate(self.cohorts):
            _check(not config.he.enabled or len(cohort.members) >= MIN_HE_COHORT, f"levels.cohorts[{i}].members",
                   f"cohort {cohort.name!r} has {len(cohort.members)} member(s); with he.enabled every cohort needs "
                   f">= {MIN_HE_COHORT}, or its expert sum would reveal an individual update")
            strangers = [m for m in cohort.members if allowed and "*" not in allowed and m not in allowed]
            _check(not strangers, f"levels.cohorts[{i}].members",
                   f"{', '.join(strangers[:3])} not in job.allowed_participants")



@dataclass(frozen=True)
class JobConfig:
    """Everything a job needs, shared verbatim by coordinator and participants."""

    job: JobSection = field(default_factory=JobSection)
    model: ModelSection = field(default_factory=ModelSection)
    task: TaskSection = field(default_factory=TaskSection)
    train: TrainSection = field(default_factory=TrainSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    he: HESection = field(default_factory=HESection)
    dp: DPSection = field(default_factory=DPSection)
    robust: RobustSection = field(default_factory=RobustSection)
    blackbox: BlackboxSection = field(default_factory=BlackboxSection)
    levels: LevelsSection = field(default_factory=LevelsSection)

    @property
    def mode(self) -> str:
        """``blackbox`` (query-only, gradient-free participants) or ``gradient`` (local backpropagation)."""
        return "blackbox" if self.blackbox.enabled else "gradient"

    def validate(self, prefix: str) -> None:
        """Checks that span sections (each section validated itself already)."""
        if self.levels.enabled:
            self.levels.check_job(self)
            _check(not self.encrypted_gram, "job.aggregator",
                   "an encrypted Gram defence cannot yet judge levelled updates (one Gram per level is not "
                   "built); with levels and he.enabled use 'fedavg'")
        _check(
            not self.augment.enabled or self.augment.warmup_rounds < self.job.rounds,
            "augment.warmup_rounds",
            f"must be < job.rounds={self.job.rounds} when augment.enabled, or no round would use pseudo-labels",
        )
        if self.he.enabled:
            allowed = ("fedbpt_linear",) if self.blackbox.enabled else ("fedavg", *GRAM_AGGREGATORS)
            _check(self.job.aggregator in allowed, "job.aggregator",
                   f"encrypted aggregation (he.enabled) supports {', '.join(allowed)} in a "
                   f"{self.mode} job, got {self.job.aggregator!r}")
            _check(self.job.participants_per_round <= self.he.max_summands, "job.participants_per_round",
                   f"must be <= he.max_summands ({self.he.max_summands}) when he.enabled")
        if not self.blackbox.enabled:
            _check(self.job.aggregator not in BLACKBOX_AGGREGATORS, "job.aggregator",
                   f"{self.job.aggregator!r} aggregates black-box search states; set blackbox.enabled = true")
            return
        _check(self.job.aggregator in BLACKBOX_AGGREGATORS, "job.aggregator",
               f"a black-box job aggregates search states: choose one of {list(BLACKBOX_AGGREGATORS)}")
        _check(not self.model.train_head, "model.train_head",
               "must be false in a black-box job: the model service scores with the frozen label head")
        _check(not self.dp.enabled, "dp.enabled",
               "DP-SGD needs gradients; a black-box (gradient-free) job cannot use it")
        _check(not self.levels.enabled, "levels.enabled",
               "prompt levels split a gradient learner's prompt; a black-box job searches one projected vector")
        _check(not self.augment.enabled, "augment.enabled",
               "pseudo-labelling needs the local model; a black-box participant only queries a model service")


    @property
    def encrypted_gram(self) -> bool:
        """Encrypted job with a Gram defence: the coordinator decides on the encrypted Gram matrix."""
        return self.he.enabled and self.job.aggregator in GRAM_AGGREGATORS

    @property
    def encrypted_discovery(self) -> bool:
        """Encrypted levelled job discovering its cohorts: the coordinator clusters an encrypted Gram matrix."""
        levels = self.levels
        return self.he.enabled and levels.enabled and levels.expert_tokens > 0 and levels.cohorts_from == "discover"

    def he_params(self) -> CkksParams:
        """The job's CKKS parameters: ``[he]``'s addition-only chain, or whenever the coordinator needs an
        encrypted Gram matrix (a Gram defence, or cohort discovery) the fixed one-multiplication chain of
        ``crypto.gram.gram_params`` (``he.max_summands`` still applies) with its evaluation keys."""
        gram = self.encrypted_gram or self.encrypted_discovery
        return gram_params(self.he.params()) if gram else self.he.params()


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

    def validate(self, prefix: str) -> None:
        _check_tls(prefix, self.insecure, {"ca_cert": self.ca_cert, "cert": self.cert, "key": self.key},
                   {"server_name": self.server_name})
        _check(not self.name or self.insecure, f"{prefix}.name",
               "is for --insecure only; with certificates the identity is the certificate's name")
        _check(bool(self.job), f"{prefix}.job", "name the job to join")
        _check(0 < self.rpc_timeout_s <= 3600, f"{prefix}.rpc_timeout_s", "must be in (0, 3600]")
        _check(not self.model_service or ":" in self.model_service, f"{prefix}.model_service",
               f"must be host:port, got {self.model_service!r}")
        _check(bool(self.data_dir), f"{prefix}.data_dir", "name the directory holding train.jsonl and test.jsonl")
        _check(1 <= self.threads <= 256, f"{prefix}.threads", "must be in [1, 256]")
        _check(0 < self.retry_initial_s <= self.retry_max_s, f"{prefix}.retry_initial_s", "must be in (0, retry_max_s]")
        _check(self.give_up_after_s > 0, f"{prefix}.give_up_after_s", "must be > 0")
        _check(0.1 <= self.heartbeat_s <= 3600, f"{prefix}.heartbeat_s", "must be in [0.1, 3600] seconds")


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
    shutdown_grace_s: float = 10.0

    def validate(self, prefix: str) -> None:
        _check_tls(prefix, self.insecure, {"ca_cert": self.ca_cert, "cert": self.cert, "key": self.key, "crl": self.crl})
        _check(self.rate_limit_per_s > 0, f"{prefix}.rate_limit_per_s", "must be > 0")
        _check(self.rate_limit_burst >= 1, f"{prefix}.rate_limit_burst", "must be >= 1")
        _check(1 <= self.max_concurrent_uploads <= 64, f"{prefix}.max_concurrent_uploads", "must be in [1, 64]")
        _check(":" in self.listen, f"{prefix}.listen", f"must be host:port, got {self.listen!r}")
        _check(0.01 <= self.tick_s <= 10, f"{prefix}.tick_s", "must be in [0.01, 10]")
        _check(self.offline_after_s > 0, f"{prefix}.offline_after_s", "must be > 0")
        _check(self.upload_timeout_s > 0, f"{prefix}.upload_timeout_s", "must be > 0")
        _check(0 <= self.shutdown_grace_s <= 600, f"{prefix}.shutdown_grace_s", "must be in [0, 600] seconds")
        _check(64 * 1024 <= self.max_message_bytes <= 64 * 1024 * 1024, f"{prefix}.max_message_bytes",
               "must be in [65536, 67108864]")


@dataclass(frozen=True)
class CoordinatorConfig:
    coordinator: CoordinatorSection = field(default_factory=CoordinatorSection)


def _check_tls(prefix: str, insecure: bool, required: dict[str, str], optional: dict[str, str] | None = None) -> None:
    """Certificate keys are required with mTLS (the default) and all forbidden with ``insecure``."""
    if insecure:
        given = [f"{prefix}.{k}" for k, v in {**required, **(optional or {})}.items() if v]
        _check(not given, f"{prefix}.insecure", f"cannot be combined with {', '.join(given)}")
        return
    for key, value in required.items():
        _check(bool(value), f"{prefix}.{key}", "required for mTLS (or run with --insecure for local development only)")
@dataclass(frozen=True)
class ModelServiceSection:
    """A query-only model service: hosts one frozen PLM and scores texts under caller-supplied soft prompts.

    Callers send their institution's texts, so the service speaks mTLS by default: its own certificate and
    key, and the CA whose certificates it accepts from callers (the federation CA, or the institution's own).
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

    def validate(self, prefix: str) -> None:
        _check(":" in self.listen, f"{prefix}.listen", f"must be host:port, got {self.listen!r}")
        _check(self.kind in ("auto", "encoder", "causal"), f"{prefix}.kind", "must be 'auto', 'encoder' or 'causal'")
        _check(1 <= self.threads <= 256, f"{prefix}.threads", "must be in [1, 256]")
        _check(1 <= self.max_batch <= 4096, f"{prefix}.max_batch", "must be in [1, 4096]")
        _check(1 <= self.max_prompt_tokens <= 512, f"{prefix}.max_prompt_tokens", "must be in [1, 512]")
        _check(8 <= self.max_length <= 4096, f"{prefix}.max_length", "must be in [8, 4096]")
        _check(1 <= self.max_text_chars <= 1_000_000, f"{prefix}.max_text_chars", "must be in [1, 1000000]")
        _check(1 <= self.max_tasks <= 1024, f"{prefix}.max_tasks", "must be in [1, 1024]")
        _check(1 <= self.forward_batch <= 4096, f"{prefix}.forward_batch", "must be in [1, 4096]")
        _check_tls(prefix, self.insecure, {"ca_cert": self.ca_cert, "cert": self.cert, "key": self.key})


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
    return parse_toml(text, cls, str(p), overrides)


def dump_toml(config: Any) -> str:
    """Serialise a config dataclass back to TOML (the job text the coordinator stores and hands out)."""
    return tomli_w.dumps(dataclasses.asdict(config))
