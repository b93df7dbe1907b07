"""Configuration: TOML -> frozen dataclasses, validated at load with the offending key named.

A package facade: import every name from ``fedprompt.config`` (``from fedprompt.config import JobConfig``);
the modules behind it are an implementation detail and may move.  What each holds:

- ``codec``: TOML <-> frozen dataclasses (``from_mapping``, ``parse_toml``, ``load_toml``, ``dump_toml``,
  dotted CLI overrides, ``read_toml_text`` for a file read within ``MAX_TOML_BYTES``) and ``check`` /
  ``check_range``, the validation helpers that name the bad key; knows no schema.
- ``job``: the job schema shared verbatim by coordinator and participants (``JobConfig`` and its run,
  model, task, training, augmentation, robustness and black-box sections) with the checks that span
  sections; what depends on an aggregator's kind is checked by the coordinator's aggregator registry.
- ``privacy``: the job's ``[dp]`` and ``[he]`` sections; ``levels``: ``[levels]`` and its cohorts;
  ``names``: ``IDENTITY``, the pattern of a caller's name that both schema modules check, and
  ``job_name_problem``, the rule for a job's name.
- ``signed``: the job config as members see it (``member_toml``) and the admin's signature of it
  (``sign_config`` at submission, ``check_submitted`` by the coordinator, ``check_job_config`` by a member).
- ``process``: the coordinator's, a participant daemon's and a model service's own config files, and
  ``store_target``, how the coordinator's ``store`` URL is read (SQLite file or PostgreSQL server).
"""

from __future__ import annotations

from fedprompt.config.codec import (
    INF_ALLOWED,
    INT64_MAX,
    INT64_MIN,
    MAX_TOML_BYTES,
    dump_toml,
    from_mapping,
    load_toml,
    parse_toml,
    read_toml_text,
    set_dotted,
    toml_mapping,
)
from fedprompt.config.job import (
    MAX_DEADLINE_S,
    MAX_PER_ROUND,
    TASK_KINDS,
    AugmentSection,
    BlackboxSection,
    JobConfig,
    JobSection,
    ModelSection,
    RobustSection,
    TaskSection,
    TrainSection,
)
from fedprompt.config.levels import COHORT_NAME, COHORT_SOURCES, MIN_HE_COHORT, CohortSpec, LevelsSection
from fedprompt.config.names import IDENTITY, JOB_NAME_MAX_BYTES, JOB_NAME_SEPARATORS, job_name_problem
from fedprompt.config.peft import ALL_LINEAR, PEFT_METHODS, PeftSection
from fedprompt.config.placement import DTYPES, check_placement, placement_key
from fedprompt.config.privacy import (
    ACCOUNTANTS,
    HE_MODES,
    MAX_CLIP,
    MAX_EPSILON,
    MAX_NOISE,
    MAX_WEIGHT_UNIT,
    DPSection,
    HESection,
)
from fedprompt.config.process import (
    CoordinatorConfig,
    CoordinatorSection,
    ModelServiceConfig,
    ModelServiceSection,
    ParticipantConfig,
    ParticipantSection,
    store_target,
)
from fedprompt.config.signed import SIGNED_CONFIG, check_job_config, check_submitted, member_toml, sign_config

__all__ = [
    "ACCOUNTANTS",
    "ALL_LINEAR",
    "COHORT_NAME",
    "COHORT_SOURCES",
    "DTYPES",
    "HE_MODES",
    "IDENTITY",
    "INF_ALLOWED",
    "INT64_MAX",
    "INT64_MIN",
    "JOB_NAME_MAX_BYTES",
    "JOB_NAME_SEPARATORS",
    "MAX_CLIP",
    "MAX_DEADLINE_S",
    "MAX_EPSILON",
    "MAX_NOISE",
    "MAX_WEIGHT_UNIT",
    "MAX_PER_ROUND",
    "MAX_TOML_BYTES",
    "MIN_HE_COHORT",
    "PEFT_METHODS",
    "SIGNED_CONFIG",
    "TASK_KINDS",
    "AugmentSection",
    "BlackboxSection",
    "CohortSpec",
    "CoordinatorConfig",
    "CoordinatorSection",
    "DPSection",
    "HESection",
    "JobConfig",
    "JobSection",
    "LevelsSection",
    "ModelSection",
    "ModelServiceConfig",
    "ModelServiceSection",
    "ParticipantConfig",
    "ParticipantSection",
    "PeftSection",
    "RobustSection",
    "TaskSection",
    "TrainSection",
    "check_job_config",
    "check_placement",
    "check_submitted",
    "dump_toml",
    "from_mapping",
    "job_name_problem",
    "load_toml",
    "member_toml",
    "parse_toml",
    "placement_key",
    "read_toml_text",
    "set_dotted",
    "sign_config",
    "store_target",
    "toml_mapping",
]
