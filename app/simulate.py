"""Many participants without sockets, driving the real coordinator and participant domain code directly: for
experiments and benchmarks.  Where they run (this process, or a Ray cluster) is the engine's business
(``app.engines``).

A simulation file is a job config plus two tables that never reach the coordinator: ``[simulation]`` (data
and how it is dealt to sites, and the engine) and ``[attack]`` (the attack simulator, ``participant.attacks``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import tomli_w

from fedprompt.app.attacks import AttackSection, attack_success_rate, choose_malicious
from fedprompt.app.engines import EngineSection, open_engine, split_engine
from fedprompt.app.engines.sites import SitePlan, site_name
from fedprompt.app.local_link import LocalLink
from fedprompt.app.report import build_report, privacy_spent
from fedprompt.config import JobConfig, dump_toml, from_mapping, read_toml_text, toml_mapping
from fedprompt.coordinator.jobs import JobManager
from fedprompt.data.datasets import Example, majority_accuracy, task_labels
from fedprompt.data.shards import DataPlan, SiteData
from fedprompt.promptfile import save_prompt
from fedprompt.protocol import (
    CoordinatorLink,
    JobView,
)

if TYPE_CHECKING:
    from fedprompt.models import Backbone
    from fedprompt.participant.train import Trainer

log = structlog.get_logger("fedprompt.app.simulate")


@dataclass(frozen=True)
class SimulationFile:
    """A parsed simulation file: the job (what the coordinator sees) plus the simulation-only tables."""

    job: JobConfig
    simulation: DataPlan = field(default_factory=DataPlan)
    attack: AttackSection = field(default_factory=AttackSection)
    engine: EngineSection = field(default_factory=EngineSection)


def parse_simulation(text: str, source: str = "<simulation>", overrides: dict[str, Any] | None = None) -> SimulationFile:
    """Parse a simulation TOML: ``[simulation]`` and ``[attack]`` are split off, the rest is the job config."""
    data = toml_mapping(text, source, overrides)
    engine_keys, plan_keys = split_engine(data.pop("simulation", {}), DataPlan)
    engine = from_mapping(EngineSection, engine_keys, "simulation")
    simulation = from_mapping(DataPlan, plan_keys, "simulation")
    job_table = data.setdefault("job", {})
    if isinstance(job_table, dict) and not job_table.get("allowed_participants"):
        # a simulation enrols exactly its sites (``simulate``): a threshold job deals its key among them
        job_table["allowed_participants"] = [site_name(k) for k in range(simulation.participants)]
    attack = from_mapping(AttackSection, data.pop("attack", {}), "attack")
    job = from_mapping(JobConfig, data)
    attack.target_index(job.task.label_names)
    return SimulationFile(job, simulation, attack, engine)


def simulation_text(job: JobConfig, plan: DataPlan) -> str:
    """The TOML of a simulation file without an attack, which ``parse_simulation`` reads back to ``job`` and
    ``plan``: ``data prepare --write-job`` writes one, so the next command runs without editing."""
    return dump_toml(job) + "\n" + tomli_w.dumps({"simulation": dataclasses.asdict(plan)})


def load_simulation(path: str | Path, overrides: dict[str, Any] | None = None) -> SimulationFile:
    """Read and parse a simulation file; a bad key is named with the file."""
    return parse_simulation(read_toml_text(path, "simulation config"), str(path), overrides)


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def pooled_detection(rounds: list[dict[str, Any]]) -> dict[str, float | None]:
    """Precision and recall pooled over rounds, each with its ``rejected`` and ``malicious`` members: one
    rule for a run's rounds (``detection_scores``) and for the rounds of several seeds (``bench robust``)."""
    hits = sum(len(set(r["rejected"]) & set(r["malicious"])) for r in rounds)
    return {"precision": _ratio(hits, sum(len(r["rejected"]) for r in rounds)),
            "recall": _ratio(hits, sum(len(r["malicious"]) for r in rounds))}


def detection_scores(view: JobView, malicious: set[str]) -> dict[str, Any]:
    """Detection precision and recall of a robust aggregator, per round and pooled over rounds.

    Per round: precision = rejected-and-malicious / rejected, recall = rejected-and-malicious / malicious
    among the round's updates (``None`` where the denominator is 0), and ``accepted_malicious``: the
    malicious updates that got into the aggregate.
    """
    rounds = []
    for r in view.rounds:
        if r.state != "done":
            continue
        bad = malicious & set(r.selected)
        tp = len(bad & set(r.rejected))
        rounds.append({"round": r.round, "rejected": list(r.rejected), "malicious": sorted(bad),
                       "accepted_malicious": sorted(bad - set(r.rejected)),
                       "precision": _ratio(tp, len(r.rejected)), "recall": _ratio(tp, len(bad))})
    return {**pooled_detection(rounds), "rounds": rounds}


def simulate(
    config: JobConfig,
    sites: list[SiteData],
    backbone: Backbone | None = None,
    on_round: Callable[[JobView], None] | None = None,
    attack: AttackSection | None = None,
    trainer: Trainer | None = None,
    state_root: Path | None = None,
    link: Callable[[JobManager, str], CoordinatorLink] = LocalLink,
    asr_examples: list[Example] | None = None,
    export: Path | None = None,
    engine: EngineSection | None = None,
    placement: tuple[str, str] = ("auto", "auto"),
) -> dict[str, Any]:
    """Run a whole job on ``engine`` (default: in-process) and return its report (the demo's keys plus
    ``seconds`` and the engine's ``details``).

    With an ``attack`` (kind other than "none") the chosen sites behave maliciously and the report adds
    ``malicious``, ``asr`` (attack success rate of the final global prompt on every site's test split; for a
    backdoor, also meaningful with no malicious site as the baseline), ``asr_triggered`` (the triggered inputs
    it was measured on, among ``asr_examples``: held-out examples, by default every site's test split) and
    ``detection`` (precision/recall
    of the aggregator's rejections, when it makes any).  ``trainer`` replaces local training (e.g. a
    ``participant.train.memoized`` one shared by runs that replay the same rounds).  With ``state_root`` each
    site keeps its state directory (e.g. the updates it sent, ``updates/round-NNNN.npy``) under
    ``state_root/<site name>``; ``link`` builds each site's ``CoordinatorLink`` (e.g. one that records every
    message a site sends); ``trainer`` and ``link`` are for the in-process engine only; ``placement``
    is the (device, dtype) the sites load the frozen PLM with where no ``backbone`` is given.  The report's ``final_by_participant`` holds each site's metrics on the final
    version (its own test split); with ``[levels]``, ``cohorts`` maps sites to their expert-level cohorts.
    With ``export`` the final global prompt (as the first site holds it, so also in encrypted jobs) is written
    there as a prompt file, as ``admin export`` writes one (``predict --prompt`` reads it), and the report's
    ``exported`` names it.
    """
    started = time.perf_counter()
    names = [site_name(k) for k in range(len(sites))]
    enrolled = dataclasses.replace(config, job=dataclasses.replace(config.job, allowed_participants=tuple(names)))
    attack = attack or AttackSection()
    malicious = choose_malicious(len(sites), attack)
    plan = SitePlan(enrolled, attack, frozenset(malicious), state_root, *placement)
    with open_engine(engine or EngineSection(), plan, sites, backbone, trainer, link) as run:
        run.join()
        exchanged, plm_params = run.vector_size(), run.plm_params()
        log.info("tuning", method=config.peft.method, exchanged_floats=exchanged, plm_params=plm_params,
                 exchanged_over_plm=exchanged / plm_params)
        finished = False
        while not finished:
            progressed, finished = run.sweep()
            if on_round is not None:
                on_round(run.view())  # after every pass: a round shows once its version is evaluated
            if not progressed and not finished and run.stalled():
                break
        outcome = run.outcome()
        view = outcome.view
        test_labels = [y for site in sites for y in task_labels(site.test, config.task)]
        extra: dict[str, Any] = {"final_by_participant": outcome.final_by_participant, **run.details}
        if outcome.cohorts is not None:
            extra["cohorts"] = outcome.cohorts
        if attack.kind != "none":
            extra["attack"] = attack.__dict__
            extra["malicious"] = [names[k] for k in malicious]
            extra["detection"] = detection_scores(view, set(extra["malicious"])) if outcome.flags else None
        if attack.kind == "backdoor" and view.global_version >= 0:
            final = run.global_vector(view.global_version)
            success = attack_success_rate(lambda texts: run.predict_proba(final, texts),
                                          asr_examples or [ex for site in sites for ex in site.test],
                                          config.task.label_names, attack)
            extra["asr"], extra["asr_triggered"] = success.rate, success.triggered
        if export is not None and view.global_version >= 0:
            save_prompt(export, run.global_vector(view.global_version), dump_toml(enrolled),
                        view.global_version, view.job_id)
            extra["exported"] = str(export)
    return build_report(view, majority_accuracy(test_labels), exchanged, plm_params,
                        test_examples=sum(len(site.test) for site in sites), seconds=round(time.perf_counter() - started, 2), runner="simulation", dp=config.dp.enabled,
                        peft_method=config.peft.method,
                        **privacy_spent(view), **extra)
