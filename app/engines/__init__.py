"""Where a simulation runs its coordinator and its sites: an *engine*, chosen by ``[simulation] engine``.

* ``inprocess`` (default, ``engines.inprocess``): everything in this process, one site after the other.
* ``ray`` (``engines.ray_engine``, the ``fedprompt[ray]`` extra): the coordinator in one Ray actor and the
  sites spread over a bounded pool of Ray actors, on a local Ray started for the run or an existing cluster.

Both run the same domain code: a ``SimCoordinator`` (``engines.coordinator``) over the coordinator's
``JobManager``, and ``SiteGroup``s (``engines.sites``) of ``ParticipantRuntime``s polled by one shared step.
``simulate`` drives every engine through ``Engine`` alike, so the engine decides only where that code runs.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from fedprompt.config.codec import check, check_range
from fedprompt.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    from _typeshed import DataclassInstance

    from fedprompt.app.engines.coordinator import Outcome
    from fedprompt.app.engines.sites import SitePlan
    from fedprompt.coordinator.jobs import JobManager
    from fedprompt.data.shards import SiteData
    from fedprompt.models import Backbone
    from fedprompt.participant.train import Trainer
    from fedprompt.protocol import CoordinatorLink, JobView

ENGINES = ("inprocess", "ray")
#: The keys of a simulation file's ``[simulation]`` table that choose the engine (the others plan the data).
ENGINE_KEYS = ("engine", "ray")


@dataclass(frozen=True)
class RaySection:
    """``[simulation.ray]``: where the Ray engine runs, and what each site worker declares to Ray's scheduler.

    A worker runs one site's task at a time, so its resources are those of one running participant:
    ``cpus_per_worker`` (also its torch threads, rounded down, at least 1), ``gpus_per_worker`` (reserved for it
    by the scheduler; training runs where the learner puts it, on the CPU today) and ``memory_mb`` (0: none
    reserved).  ``workers`` = 0 sizes the pool to the cluster: its CPUs // ``cpus_per_worker``, at most one per
    site.  ``address`` "" starts a local Ray for the run (``num_cpus``: how many of this machine's CPUs it
    may use, 0 for all) and shuts it down after; "auto" or "ray://HOST:10001" joins an existing cluster.
    """

    address: str = ""
    workers: int = 0
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    memory_mb: int = 0
    num_cpus: int = 0

    def validate(self, prefix: str) -> None:
        check(len(self.address) <= 512, f"{prefix}.address", f"must be at most 512 characters, got {len(self.address)}")
        check_range(self.workers, f"{prefix}.workers", 0, 100_000, note="0: the cluster's CPUs // cpus_per_worker")
        check_range(self.cpus_per_worker, f"{prefix}.cpus_per_worker", 0.0, 1024.0, open_low=True)
        check_range(self.gpus_per_worker, f"{prefix}.gpus_per_worker", 0.0, 64.0)
        check_range(self.memory_mb, f"{prefix}.memory_mb", 0, 16_777_216, note="0: none reserved")
        check_range(self.num_cpus, f"{prefix}.num_cpus", 0, 4096, note="0: all of this machine's")
        check(not (self.address and self.num_cpus), f"{prefix}.num_cpus",
              "sizes the local Ray started for the run; a cluster named by address has its own CPUs")


@dataclass(frozen=True)
class EngineSection:
    """The engine keys of ``[simulation]``: ``engine`` ("inprocess" or "ray") and the ``[simulation.ray]`` table."""

    engine: str = "inprocess"
    ray: RaySection = field(default_factory=RaySection)

    def validate(self, prefix: str) -> None:
        check(self.engine in ENGINES, f"{prefix}.engine", f"must be one of {', '.join(ENGINES)}, got {self.engine!r}")


def split_engine(table: Any, plan: type[DataclassInstance]) -> tuple[dict[str, Any], Any]:
    """A ``[simulation]`` table split into its engine keys and the rest (the data ``plan``'s, checked by it); a
    key of neither is named with every key the table takes."""
    if not isinstance(table, dict):
        return {}, table
    allowed = {f.name for f in dataclasses.fields(plan)} | set(ENGINE_KEYS)
    for key in table:
        check(key in allowed, f"simulation.{key}", f"unknown key (allowed: {', '.join(sorted(allowed))})")
    return ({k: v for k, v in table.items() if k in ENGINE_KEYS},
            {k: v for k, v in table.items() if k not in ENGINE_KEYS})


class Engine(ABC):
    """One simulation's coordinator and sites, wherever they run.  Site ``k`` is participant ``site-k``; "the
    first site" (site 0) is the one whose view of the final global the report reads (as ``simulate`` always has:
    in encrypted jobs only the sites hold the global).  ``details``: what the run's report says of the engine."""

    details: dict[str, Any]

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    @abstractmethod
    def join(self) -> None:
        """Every site joins, one after the other in site order (site 0 provides the initial prompt), then the
        job starts."""

    @abstractmethod
    def sweep(self) -> tuple[bool, bool]:
        """One polling step of every unfinished site (``sites.SiteGroup.sweep``); (any progressed, all finished)."""

    @abstractmethod
    def view(self) -> JobView:
        """The job as an admin sees it now (rounds, their state and metric reports)."""

    @abstractmethod
    def stalled(self) -> bool:
        """True when no sweep can change anything: no round open and the job not running."""

    @abstractmethod
    def outcome(self) -> Outcome:
        """What the report needs of the coordinator once the job ended."""

    @abstractmethod
    def vector_size(self) -> int:
        """The exchanged vector's size (the first site's learner)."""

    @abstractmethod
    def plm_params(self) -> int:
        """The frozen PLM's parameter count."""

    @abstractmethod
    def global_vector(self, version: int) -> np.ndarray:
        """Global ``version`` as the first site holds it."""

    @abstractmethod
    def predict_proba(self, vector: np.ndarray, texts: list[str]) -> np.ndarray:
        """The first site's class probabilities of ``texts`` under prompt ``vector``."""

    def close(self) -> None:  # noqa: B027 - an engine with nothing to release needs no override
        """Release what the engine started."""


def open_engine(section: EngineSection, plan: SitePlan, sites: list[SiteData], backbone: Backbone | None,
                trainer: Trainer | None, link: Callable[[JobManager, str], CoordinatorLink]) -> Engine:
    """The engine ``section`` names, with the job created and every site's runtime built (not yet joined).

    ``trainer`` and ``link`` hook into objects of this process, so the Ray engine takes neither (only the
    default ``LocalLink``, which it runs in its coordinator's actor)."""
    from fedprompt.app.local_link import LocalLink

    if section.engine == "ray":
        if trainer is not None or link is not LocalLink:
            raise ConfigError("simulation.engine: a custom trainer or link runs in-process only; use engine = "
                              "\"inprocess\" with them")
        from fedprompt.app.engines.ray_engine import RayEngine

        return RayEngine(section.ray, plan, sites, backbone)
    from fedprompt.app.engines.inprocess import InProcess

    return InProcess(plan, sites, backbone, trainer, link)
