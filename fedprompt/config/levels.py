"""The job's prompt-level sections: ``[levels]`` (global, expert and personal prompts) and its admin-given
cohorts (``[[levels.cohorts]]``).

Split from ``job.py`` because levels carry their own vocabulary (cohort names, how cohorts are found, the
smallest cohort HE may publish) that the coordinator's level and cohort code imports as well.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedprompt.config.codec import check, check_range
from fedprompt.config.names import IDENTITY

if TYPE_CHECKING:
    from fedprompt.config.job import JobConfig

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
        check(bool(COHORT_NAME.match(self.name)), f"{prefix}.name",
              f"{self.name[:40]!r} must be 1-64 letters, digits or ._- starting with a letter or digit")
        check(bool(self.members), f"{prefix}.members", "a cohort needs at least one member")
        for i, who in enumerate(self.members):
            check(bool(IDENTITY.match(who)), f"{prefix}.members[{i}]", f"{who[:40]!r} is not a participant identity")
        check(len(set(self.members)) == len(self.members), f"{prefix}.members", "lists a member twice")


@dataclass(frozen=True)
class LevelsSection:
    """Three prompt levels (PLMM; see ``fedprompt.wire.levels``): the prompt a participant uses is a **global**
    prompt (aggregated over everyone), an **expert** prompt (aggregated within the participant's cohort) and
    a **personal** prompt (trained locally, never uploaded), concatenated in that order.  Off by default.

    With levels on, ``model.prompt_length`` must equal the three token counts' sum.  Cohorts come from the
    admin (``cohorts_from = "admin"`` and ``[[levels.cohorts]]`` tables) or are discovered by the coordinator
    (``"discover"``): after round ``discover_round`` it clusters that round's updates by similarity into
    ``num_cohorts`` cohorts; under HE from the encrypted Gram matrix (``JobConfig.encrypted_discovery``).
    Every count is checked whether or not it is used: token counts in [0, 512] (global [1, 512]),
    ``num_cohorts`` in [2, 64], ``discover_round`` in [1, 100000] (a round number, as ``job.rounds``).
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
        check(1 <= self.global_tokens <= 512, f"{prefix}.global_tokens", f"must be in [1, 512], got {self.global_tokens}")
        check(0 <= self.expert_tokens <= 512, f"{prefix}.expert_tokens",
              f"must be in [0, 512] (0 = no expert level), got {self.expert_tokens}")
        check(0 <= self.personal_tokens <= 512, f"{prefix}.personal_tokens",
              f"must be in [0, 512] (0 = no personal level), got {self.personal_tokens}")
        check(self.total_tokens <= 512, f"{prefix}.personal_tokens", "the three levels together exceed 512 tokens")
        check(self.cohorts_from in COHORT_SOURCES, f"{prefix}.cohorts_from",
              f"must be one of {', '.join(COHORT_SOURCES)}, got {self.cohorts_from!r}")
        check(2 <= self.num_cohorts <= 64, f"{prefix}.num_cohorts", f"must be in [2, 64], got {self.num_cohorts}")
        check_range(self.discover_round, f"{prefix}.discover_round", 1, 100_000)
        if self.expert_tokens == 0:
            check(not self.cohorts, f"{prefix}.cohorts", "cohorts need an expert level (expert_tokens > 0)")
            return
        if self.cohorts_from == "discover":
            check(not self.cohorts, f"{prefix}.cohorts", 'must be empty with cohorts_from = "discover"')
        names = [c.name for c in self.cohorts]
        check(len(set(names)) == len(names), f"{prefix}.cohorts", "cohort names must be distinct")
        seen: dict[str, str] = {}
        for i, cohort in enumerate(self.cohorts):
            for who in cohort.members:
                check(who not in seen, f"{prefix}.cohorts[{i}].members",
                      f"{who} is already in cohort {seen.get(who)!r}; a participant belongs to one cohort")
                seen[who] = cohort.name

    def check_job(self, config: JobConfig) -> None:
        """Checks against the rest of the job (called by ``JobConfig.validate`` when levels are on)."""
        check(config.model.prompt_length == self.total_tokens, "model.prompt_length",
              f"must equal levels.global_tokens + expert_tokens + personal_tokens = {self.total_tokens} "
              f"when levels.enabled, got {config.model.prompt_length}")
        check(not config.dp.participant_level, "dp.participant_noise_multiplier",
              "participant-level noise is calibrated for sums of >= job.min_participants updates; a cohort's "
              "expert sum has fewer, so it cannot be combined with levels (use record-level DP)")
        if self.expert_tokens == 0:
            return
        if self.cohorts_from == "discover":
            check(self.discover_round < config.job.rounds, "levels.discover_round",
                  f"must be < job.rounds={config.job.rounds}, or no round would use the discovered cohorts")
        allowed = config.job.allowed_participants
        for i, cohort in enumerate(self.cohorts):
            check(not config.he.enabled or len(cohort.members) >= MIN_HE_COHORT, f"levels.cohorts[{i}].members",
                  f"cohort {cohort.name!r} has {len(cohort.members)} member(s); with he.enabled every cohort needs "
                  f">= {MIN_HE_COHORT}, or its expert sum would reveal an individual update")
            strangers = [m for m in cohort.members if allowed and "*" not in allowed and m not in allowed]
            check(not strangers, f"levels.cohorts[{i}].members",
                  f"{', '.join(strangers[:3])} not in job.allowed_participants")
