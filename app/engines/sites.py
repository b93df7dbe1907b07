"""The sites' side of a simulation: a ``SiteGroup`` of ``ParticipantRuntime``s sharing one loaded backbone, and
the one polling step every engine runs (``SiteGroup.sweep``).  The in-process engine holds one group of all
sites; the Ray engine one group per worker actor, so each runtime's in-memory state stays in one place."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedprompt.app.attacks import Adversary, AttackSection
from fedprompt.config import JobConfig
from fedprompt.data.shards import SiteData
from fedprompt.participant.learners import local_learner
from fedprompt.participant.runtime import ParticipantRuntime
from fedprompt.protocol import CoordinatorLink, TaskKind

if TYPE_CHECKING:
    from fedprompt.models import Backbone
    from fedprompt.participant.train import Trainer


def site_name(k: int) -> str:
    """Site ``k``'s participant identity."""
    return f"site-{k}"


@dataclass(frozen=True)
class SitePlan:
    """What every site of a simulation shares: the job (as enrolled, naming the sites), the attack and which
    sites it makes malicious, the root of the sites' state directories (None: no state kept), and where the
    sites' frozen PLM runs in which precision (``--device``/``--dtype``) wherever they load it."""

    config: JobConfig
    attack: AttackSection
    malicious: frozenset[int]
    state_root: Path | None = None
    device: str = "auto"
    dtype: str = "auto"


class SiteGroup:
    """Some sites of a simulation, ``sites`` by site number, each a ``ParticipantRuntime`` over ``link(name)``.

    They share one frozen PLM: ``backbone``, or the job's model loaded once here.  ``trainer`` replaces local
    training (``participant.train.memoized``)."""

    def __init__(self, plan: SitePlan, job_id: str, sites: dict[int, SiteData],
                 link: Callable[[str], CoordinatorLink], backbone: Backbone | None = None,
                 trainer: Trainer | None = None) -> None:
        if backbone is None:
            from fedprompt.models import load_backbone, resolve_placement  # torch: only where sites run

            backbone = load_backbone(plan.config.model.path, plan.config.model.kind,
                                     placement=resolve_placement(plan.device, plan.dtype, ""))
        self.backbone = bb = backbone
        labels = plan.config.task.label_names
        self.runtimes = {
            k: ParticipantRuntime(link(site_name(k)), site, job_id, lambda cfg: local_learner(cfg, bb, trainer),
                                  state_dir=plan.state_root / site_name(k) if plan.state_root is not None else None,
                                  behaviour=Adversary(plan.attack, labels, k) if k in plan.malicious else None)
            for k, site in sorted(sites.items())}
        self.finished: set[int] = set()

    def join(self, k: int) -> None:
        self.runtimes[k].join()

    def sweep(self) -> tuple[bool, bool]:
        """One polling step of every unfinished site, in site order: pick up keys (encrypted jobs), ask for a
        task, do it.  Returns (any site did a task, every site is done)."""
        progressed = False
        for k, runtime in self.runtimes.items():
            if k in self.finished or runtime.info is None:
                continue
            runtime.service_keys()
            task = runtime.link.get_task(runtime.info.job_id, 0)
            if task.kind is TaskKind.DONE:
                self.finished.add(k)
            elif task.kind is not TaskKind.WAIT:
                runtime.handle(task)
                progressed = True
        return progressed, len(self.finished) == len(self.runtimes)

    def vector_size(self, k: int) -> int:
        learner = self.runtimes[k].learner
        assert learner is not None, "a site has its learner once it joined"
        return learner.vector_size

    def plm_params(self) -> int:
        return self.backbone.num_parameters

    def global_vector(self, k: int, version: int) -> np.ndarray:
        return self.runtimes[k].global_vector(version)

    def predict_proba(self, k: int, vector: np.ndarray, texts: list[str]) -> np.ndarray:
        learner = self.runtimes[k].learner
        assert learner is not None, "a site has its learner once it joined"
        return learner.predict_proba(vector, texts)
