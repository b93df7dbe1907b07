"""Configuration: TOML -> frozen dataclasses, validated at load with the offending key named.

A package facade: import every name from ``fedprompt.config`` (``from fedprompt.config import JobConfig``);
the modules behind it are an implementation detail and may move.  What each holds:

- ``codec``: TOML <-> frozen dataclasses (``from_mapping``, ``parse_toml``, ``load_toml``, ``dump_toml``,
  dotted CLI overrides) and ``check``, the validation helper that names the bad key; knows no schema.
- ``job``: the job schema shared verbatim by coordinator and participants (``JobConfig`` and its run,
  model, task, training, augmentation, robustness and black-box sections) with the checks that span
  sections; what depends on an aggregator's kind is checked by the coordinator's aggregator registry.
- ``privacy``: the job's ``[dp]`` and ``[he]`` sections; ``levels``: ``[levels]`` and its cohorts;
  ``names``: ``IDENTITY``, the pattern of a caller's name that both schema modules check.
- ``process``: the coordinator's, a participant daemon's and a model service's own config files.
"""

from __future__ import annotations

from fedprompt.config.codec import dump_toml, from_mapping, load_toml, parse_toml, set_dotted, toml_mapping
from fedprompt.config.job import (
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
from fedprompt.config.names import IDENTITY
from fedprompt.config.privacy import ACCOUNTANTS, DPSection, HESection
from fedprompt.config.process import (
    CoordinatorConfig,
    CoordinatorSection,
    ModelServiceConfig,
    ModelServiceSection,
    ParticipantConfig,
    ParticipantSection,
)

__all__ = [
    "ACCOUNTANTS",
    "COHORT_NAME",
    "COHORT_SOURCES",
    "IDENTITY",
    "MIN_HE_COHORT",
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
    "RobustSection",
    "TaskSection",
    "TrainSection",
    "dump_toml",
    "from_mapping",
    "load_toml",
    "parse_toml",
    "set_dotted",
    "toml_mapping",
]
