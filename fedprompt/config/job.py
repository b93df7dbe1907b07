"""The job schema: ``JobConfig``, its run, model, task, training and aggregation sections, and the checks
that span sections.

A job config is written by an admin and sent to the coordinator; the coordinator hands the same text to
participants so both sides build the identical model and task.  The privacy sections (``privacy.py``) and
the prompt levels (``levels.py``) have modules of their own so that each stays short; the rules that span
sections are here, in ``JobConfig.validate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedprompt.config.codec import INT64_MAX, check, check_range
from fedprompt.config.levels import LevelsSection
from fedprompt.config.names import IDENTITY, job_name_problem
from fedprompt.config.peft import PeftSection
from fedprompt.config.privacy import DPSection, HESection
from fedprompt.crypto.audit import CHECKERS
from fedprompt.crypto.ckks import CkksParams
from fedprompt.crypto.errors import ParameterError
from fedprompt.crypto.gram import gram_params
from fedprompt.errors import ConfigError

#: The most participants a round may select (a cross-silo federation has tens; the load benchmark thousands).
MAX_PER_ROUND = 100_000
#: The longest round deadline: a week, in seconds.
MAX_DEADLINE_S = 7 * 24 * 3600.0


@dataclass(frozen=True)
class JobSection:
    """How the federation runs: rounds, selection and aggregation.

    ``name`` is what admins look a job up by and logs print: 1-128 bytes of UTF-8, letters and digits of any
    script, combining marks and the separators space ``._-+``, starting with a letter or digit (the full rule,
    which keeps path separators, ``..`` and control characters out, is ``config.names.job_name_problem``).
    ``rounds`` is in [1, 100000], ``participants_per_round`` in [1, 100000] (and ``min_participants`` in
    [1, participants_per_round]), ``round_deadline_s`` in (0, 604800] (a week), and ``seed`` in
    [0, 2**63 - 1]: it seeds NumPy generators (no negative seeds) and travels as a uint64 to model services.
    """

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
        problem = job_name_problem(self.name)
        check(problem is None, f"{prefix}.name", f"{problem}")
        for i, who in enumerate(self.allowed_participants):
            check(who == "*" or bool(IDENTITY.match(who)), f"{prefix}.allowed_participants[{i}]",
                  f"{who[:40]!r} is neither '*' nor an identity (letters, digits and ._:@-, at most 128)")
        check(1 <= self.rounds <= 100_000, f"{prefix}.rounds", f"must be in [1, 100000], got {self.rounds}")
        check_range(self.participants_per_round, f"{prefix}.participants_per_round", 1, MAX_PER_ROUND)
        check(
            1 <= self.min_participants <= self.participants_per_round,
            f"{prefix}.min_participants",
            f"must be in [1, participants_per_round={self.participants_per_round}], got {self.min_participants}",
        )
        check_range(self.round_deadline_s, f"{prefix}.round_deadline_s", 0.0, MAX_DEADLINE_S, open_low=True,
                    note="seconds")
        check_range(self.seed, f"{prefix}.seed", 0, INT64_MAX)


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
        check(self.kind in ("auto", "encoder", "causal"), f"{prefix}.kind", "must be 'auto', 'encoder' or 'causal'")
        check(1 <= self.prompt_length <= 512, f"{prefix}.prompt_length", "must be in [1, 512]")
        check(8 <= self.max_length <= 4096, f"{prefix}.max_length", "must be in [8, 4096]")


#: What a job learns: to pick one of its labels, or to write a completion.
TASK_KINDS = ("classification", "generation")


@dataclass(frozen=True)
class TaskSection:
    """The task.  ``kind = "classification"``: label names as they appear in the data, and the words that describe
    them.  ``kind = "generation"``: each example's text is a prompt and its label the completion, learned with
    the causal-LM loss on the completion's tokens and generated greedily, at most ``max_new_tokens`` (in
    [1, 1024]) of them (``fedprompt.models.generator``); the label names and words are unused.  ``chat``: the
    prompts are chat messages (data rows with ``messages``), rendered by the tokenizer's chat template in
    place of ``template``."""

    kind: str = "classification"
    label_names: tuple[str, ...] = ("rotten", "fresh")
    label_words: tuple[str, ...] = ("a negative review", "a positive review")
    template: str = "{text}"
    max_new_tokens: int = 32
    chat: bool = False

    def validate(self, prefix: str) -> None:
        check(not self.chat or self.kind == "generation", f"{prefix}.chat",
              "chat messages are prompts of a generation job; set kind = 'generation'")
        check(self.kind in TASK_KINDS, f"{prefix}.kind",
              f"must be one of {', '.join(repr(k) for k in TASK_KINDS)}, got {self.kind[:40]!r}")
        check_range(self.max_new_tokens, f"{prefix}.max_new_tokens", 1, 1024)
        check(len(self.label_names) >= 2, f"{prefix}.label_names", "need at least two labels")
        check(len(set(self.label_names)) == len(self.label_names), f"{prefix}.label_names", "must be distinct")
        check(
            len(self.label_words) == len(self.label_names),
            f"{prefix}.label_words",
            f"need one word per label ({len(self.label_names)}), got {len(self.label_words)}",
        )
        check("{text}" in self.template, f"{prefix}.template", "must contain the placeholder {text}")


@dataclass(frozen=True)
class TrainSection:
    """Local training at each participant, per round.

    ``physical_batch_size`` bounds memory only: a batch larger than it runs as several forward/backward
    passes whose gradients add up to the batch's, and under DP-SGD each pass's per-example gradients are
    clipped and freed as it ends (measured: an expected batch of 256 in one pass peaked at 7.3 GB per MiniLM
    participant; SmolLM2 with LoRA at 4.5 GB in passes of 32, 2.0 GB in passes of 8).  It changes no result
    beyond float rounding.  ``max_steps`` caps the steps of a round, in [0, 1000000] (0: no cap beyond
    ``local_epochs``).
    """

    local_epochs: int = 1
    max_steps: int = 0
    batch_size: int = 16
    lr: float = 0.01
    physical_batch_size: int = 32

    def validate(self, prefix: str) -> None:
        check(1 <= self.local_epochs <= 1000, f"{prefix}.local_epochs", "must be in [1, 1000]")
        check_range(self.max_steps, f"{prefix}.max_steps", 0, 1_000_000, note="0 means no cap")
        check(1 <= self.batch_size <= 4096, f"{prefix}.batch_size", "must be in [1, 4096]")
        check(1 <= self.physical_batch_size <= 4096, f"{prefix}.physical_batch_size", "must be in [1, 4096]")
        check(0 < self.lr <= 10, f"{prefix}.lr", f"must be in (0, 10], got {self.lr}")


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
    ``max_unlabelled`` is in [0, 10000000].
    """

    enabled: bool = False
    warmup_rounds: int = 1
    threshold: float = 0.9
    per_class_cap: int = 64
    balance: bool = True
    max_unlabelled: int = 0
    gate: bool = True

    def validate(self, prefix: str) -> None:
        check(0 <= self.warmup_rounds <= 100_000, f"{prefix}.warmup_rounds", "must be in [0, 100000]")
        check(0 < self.threshold <= 1, f"{prefix}.threshold", f"must be in (0, 1], got {self.threshold}")
        check(1 <= self.per_class_cap <= 1_000_000, f"{prefix}.per_class_cap", "must be in [1, 1000000]")
        check_range(self.max_unlabelled, f"{prefix}.max_unlabelled", 0, 10_000_000, note="0 means the whole pool")


@dataclass(frozen=True)
class RobustSection:
    """Robust aggregation: the assumed bound on malicious updates per round, defence knobs, and quarantine.

    Used only by the robust aggregators (``job.aggregator`` = norm_bound, median, trimmed_mean, krum,
    multi_krum, foolsgold); FedAvg ignores it.  ``max_malicious`` and ``multi_krum_keep`` are counts of one
    round's updates, in [0, 100000] like ``job.participants_per_round``; ``quarantine_after`` counts rounds, in
    [0, 100000] like ``job.rounds``.
    """

    max_malicious: int = 1
    norm_factor: float = 2.0
    multi_krum_keep: int = 0
    quarantine_after: int = 3

    def validate(self, prefix: str) -> None:
        check_range(self.max_malicious, f"{prefix}.max_malicious", 0, MAX_PER_ROUND)
        check(1 < self.norm_factor <= 1000, f"{prefix}.norm_factor", f"must be in (1, 1000], got {self.norm_factor}")
        check_range(self.multi_krum_keep, f"{prefix}.multi_krum_keep", 0, MAX_PER_ROUND,
                    note="0 keeps n - max_malicious")
        check_range(self.quarantine_after, f"{prefix}.quarantine_after", 0, 100_000,
                    note="consecutive rejected rounds before quarantine; 0 never quarantines")


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
        check(1 <= self.intrinsic_dim <= 100_000, f"{prefix}.intrinsic_dim", "must be in [1, 100000]")
        check(2 <= self.population <= 10_000, f"{prefix}.population", "must be in [2, 10000]")
        check(0 < self.sigma <= 100, f"{prefix}.sigma", f"must be in (0, 100], got {self.sigma}")
        check(1 <= self.local_iterations <= 100_000, f"{prefix}.local_iterations", "must be in [1, 100000]")
        check(1 <= self.batch_size <= 4096, f"{prefix}.batch_size", "must be in [1, 4096]")


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
    peft: PeftSection = field(default_factory=PeftSection)

    @property
    def mode(self) -> str:
        """``blackbox`` (query-only, gradient-free participants) or ``gradient`` (local backpropagation)."""
        return "blackbox" if self.blackbox.enabled else "gradient"

    def validate(self, prefix: str) -> None:
        """Checks that span sections (each section validated itself already).  What depends on the kind of
        aggregator a job names (Gram defence, black-box, linear) is checked where the aggregator registry
        lives, when the coordinator creates the job (``coordinator.aggregation.job_aggregator``)."""
        self.peft.check_job(self)
        if self.task.kind == "generation":
            self._check_generation()
        if self.levels.enabled:
            self.levels.check_job(self)
        check(
            not self.augment.enabled or self.augment.warmup_rounds < self.job.rounds,
            "augment.warmup_rounds",
            f"must be < job.rounds={self.job.rounds} when augment.enabled, or no round would use pseudo-labels",
        )
        if self.he.enabled:
            check(self.job.participants_per_round <= self.he.max_summands, "job.participants_per_round",
                  f"must be <= he.max_summands ({self.he.max_summands}) when he.enabled")
            allowed = set(self.job.allowed_participants)
            check("*" in allowed or not allowed or len(allowed) >= CHECKERS, "job.allowed_participants",
                  f"names {len(allowed)} participant(s); with he.enabled a job needs at least {CHECKERS}, since "
                  f"{CHECKERS} key holders check every encrypted aggregate before it is stored")
            if self.he.threshold_mode:
                self._check_threshold(allowed)
        if not self.blackbox.enabled:
            return
        check(not self.model.train_head, "model.train_head",
              "must be false in a black-box job: the model service scores with the frozen label head")
        check(not self.dp.enabled, "dp.enabled",
              "DP-SGD needs gradients; a black-box (gradient-free) job cannot use it")
        check(not self.levels.enabled, "levels.enabled",
              "prompt levels split a gradient learner's prompt; a black-box job searches one projected vector")
        check(not self.augment.enabled, "augment.enabled",
              "pseudo-labelling needs the local model; a black-box participant only queries a model service")

    def _check_threshold(self, allowed: set[str]) -> None:
        """A threshold job deals key shares to a known set of n members.  Its Gram defences run on collective
        evaluation keys (``coordinator.threshold_gramjob``; their norm bound is checked with the aggregator,
        ``coordinator.aggregation``); levels (whose cohort discovery and per-level sums are not wired) wait."""
        check(bool(allowed) and "*" not in allowed, "job.allowed_participants",
              'must name the enrolled members when he.mode = "threshold": the key is shared among exactly them '
              '(n), and t of n decrypt; use he.mode = "single_key" for a job open to any participant')
        n = len(allowed)
        check(self.job.min_participants >= 2, "job.min_participants",
              'must be >= 2 when he.mode = "threshold": members make no decryption share for fewer uploaders, '
              "since a sum of one upload is that member's update")
        check(self.he.threshold <= n, "he.threshold",
              f"must be in [2, {n}] (n = the {n} job.allowed_participants), got {self.he.threshold}")
        check(not self.levels.enabled, "levels.enabled",
              'prompt levels (per-level sums, encrypted cohort discovery) are not wired for he.mode = "threshold" '
              '(the default) yet: the collective evaluation keys serve the Gram defences only; set he.mode = '
              '"single_key"')
        try:
            self.he.threshold_params(n).check("he")
        except ParameterError as exc:
            raise ConfigError(str(exc)) from exc

    def _check_generation(self) -> None:
        """A generation job writes text with a causal LM's head, which only a gradient learner holds."""
        check(self.model.kind != "encoder", "task.kind",
              "'generation' needs a causal (decoder) backbone, and model.kind is 'encoder'")
        check(not self.blackbox.enabled, "task.kind",
              "'generation' needs a local model's gradients; a black-box job scores labels through a model service")
        check(not self.levels.enabled, "levels.enabled",
              "prompt levels are built for classification jobs, and task.kind is 'generation'")
        check(not self.augment.enabled, "augment.enabled",
              "pseudo-labelling assigns labels, and task.kind = 'generation' has none")

    @property
    def encrypted_discovery(self) -> bool:
        """Encrypted levelled job discovering its cohorts: the coordinator clusters an encrypted Gram matrix."""
        levels = self.levels
        return self.he.enabled and levels.enabled and levels.expert_tokens > 0 and levels.cohorts_from == "discover"

    def summand_weight(self, num_examples: int, cap: bool = True) -> float:
        """The FedAvg weight an update of ``num_examples`` examples carries in its encrypted sum: the factor on
        its delta and the value of its weight slot.  A site encrypts it; the coordinator declares the sum of its
        uploaders' for the members' check of the decrypted weight slot (``participant.threshold_keys``): both
        call this, so the two sides agree.

        Threshold jobs: ``num_examples / he.weight_unit``, capped (with ``cap``) at the largest summand the
        threshold parameters hold (``ThresholdParams.ckks.value_bound``, 8192 / n).  Single-key jobs: the count
        itself.  Participant-level DP sends ``num_examples`` 1 (each update counts once) and keeps weight 1."""
        if not self.he.threshold_mode or self.dp.participant_level:
            return float(num_examples)
        weight = num_examples / self.he.weight_unit
        if not cap:
            return weight
        return min(weight, self.he.threshold_params(len(self.job.allowed_participants)).ckks.value_bound)

    def he_params(self, gram_defence: bool) -> CkksParams:
        """The job's CKKS parameters: ``[he]``'s addition-only chain, or whenever the coordinator computes an
        encrypted Gram matrix (its aggregator is a Gram defence, or the job discovers cohorts) the fixed
        one-multiplication chain of ``crypto.gram.gram_params`` (``he.max_summands`` still applies) with its
        evaluation keys.  Whether the aggregator is a Gram defence is the registry's to say: the coordinator
        tells participants (``JobDescription.gram_defence``)."""
        gram = gram_defence or self.encrypted_discovery
        return gram_params(self.he.params()) if gram else self.he.params()
