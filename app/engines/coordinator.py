"""The coordinator's side of a simulation: one job on the coordinator's ``JobManager`` over an in-memory store,
with what the simulation loop asks of it between sweeps.  Plain Python: the in-process engine calls it
directly, the Ray engine hosts this same class in one actor (so its methods take and return plain data)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedprompt.app.local_link import LocalLink
from fedprompt.coordinator.jobs import JobManager
from fedprompt.coordinator.store import JobState, Store
from fedprompt.errors import InvalidRequest
from fedprompt.protocol import CoordinatorLink, JobView

#: The ``CoordinatorLink`` calls a site in another process may make through ``SimCoordinator.call``.
LINK_CALLS = frozenset(name for name in vars(CoordinatorLink) if not name.startswith("_"))
#: A simulated member never goes offline (the loop polls every site in every sweep), so no sweep, however slow
#: the machine, may make one look offline: who is selected must not depend on how fast the sites run.
NEVER_OFFLINE_S = 86_400.0


@dataclass(frozen=True)
class Outcome:
    """What the report needs of the coordinator once the job ended: the job's view, each member's metrics on
    the final version, a levelled job's cohorts (None without levels) and whether its aggregator flags updates."""

    view: JobView
    final_by_participant: dict[str, dict[str, float]]
    cohorts: dict[str, str] | None
    flags: bool


class SimCoordinator:
    """One simulated job on a ``JobManager``; members reach it through ``link`` (in this process) or ``call``."""

    def __init__(self) -> None:
        self.jobs = JobManager(Store(":memory:"), offline_after_s=NEVER_OFFLINE_S)
        self.job_id = ""

    def create(self, config_toml: str) -> str:
        """Create the job (validated as the coordinator validates any); its id."""
        self.job_id = self.jobs.create_job(config_toml)
        return self.job_id

    def link(self, identity: str) -> LocalLink:
        """The in-process door for member ``identity``."""
        return LocalLink(self.jobs, identity)

    def call(self, identity: str, method: str, args: tuple[Any, ...]) -> Any:
        """Member ``identity``'s ``CoordinatorLink`` call ``method(*args)``, made through ``LocalLink``."""
        if method not in LINK_CALLS:
            raise InvalidRequest(f"{method[:40]!r} is not a coordinator call")
        return getattr(self.link(identity), method)(*args)

    def start(self) -> None:
        self.jobs.job(self.job_id).start()

    def view(self) -> JobView:
        return self.jobs.job(self.job_id).view()

    def stalled(self) -> bool:
        """No round open and the job not running (paused, failed, cancelled): no sweep can change anything."""
        job = self.jobs.job(self.job_id)
        return job.open is None and job.state is not JobState.RUNNING

    def outcome(self) -> Outcome:
        job = self.jobs.job(self.job_id)
        view = job.view()
        return Outcome(view, {row.participant_id: row.metrics
                              for row in self.jobs.store.metrics(self.job_id, view.global_version)},
                       dict(job.levels.plan.assigned) if job.levels is not None else None,  # given or discovered
                       bool(job.aggregator.flags))
