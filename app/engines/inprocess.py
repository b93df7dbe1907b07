"""The in-process engine: the coordinator and every site in this process, one site after the other."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from fedprompt.app.engines import Engine
from fedprompt.app.engines.coordinator import Outcome, SimCoordinator
from fedprompt.app.engines.sites import SiteGroup, SitePlan
from fedprompt.config import dump_toml
from fedprompt.coordinator.jobs import JobManager
from fedprompt.data.shards import SiteData
from fedprompt.protocol import CoordinatorLink, JobView

if TYPE_CHECKING:
    from fedprompt.models import Backbone
    from fedprompt.participant.train import Trainer


class InProcess(Engine):
    """One ``SimCoordinator`` and one ``SiteGroup`` of all sites; ``link`` builds each site's door into the
    coordinator's ``JobManager`` (``LocalLink``, or e.g. one that records every message a site sends)."""

    def __init__(self, plan: SitePlan, sites: list[SiteData], backbone: Backbone | None, trainer: Trainer | None,
                 link: Callable[[JobManager, str], CoordinatorLink]) -> None:
        self.coordinator = coordinator = SimCoordinator()
        job_id = coordinator.create(dump_toml(plan.config))
        self.sites = SiteGroup(plan, job_id, dict(enumerate(sites)), lambda name: link(coordinator.jobs, name),
                               backbone, trainer)
        self.details = {"engine": "inprocess"}

    def join(self) -> None:
        for k in self.sites.runtimes:
            self.sites.join(k)
        self.coordinator.start()

    def sweep(self) -> tuple[bool, bool]:
        return self.sites.sweep()

    def view(self) -> JobView:
        return self.coordinator.view()

    def stalled(self) -> bool:
        return self.coordinator.stalled()

    def outcome(self) -> Outcome:
        return self.coordinator.outcome()

    def vector_size(self) -> int:
        return self.sites.vector_size(0)

    def plm_params(self) -> int:
        return self.sites.plm_params()

    def global_vector(self, version: int) -> np.ndarray:
        return self.sites.global_vector(0, version)

    def predict_proba(self, vector: np.ndarray, texts: list[str]) -> np.ndarray:
        return self.sites.predict_proba(0, vector, texts)
