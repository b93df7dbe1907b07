"""The participant daemon: one institution's process, talking gRPC to the coordinator.

The learner is chosen by the job's mode once the job's config is known: gradient jobs load the PLM here;
black-box jobs only connect to ``participant.model_service`` and never import torch or transformers.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import structlog
from tqdm import tqdm

from fedprompt.config import JobConfig, ParticipantSection
from fedprompt.data.shards import load_site
from fedprompt.errors import ConfigError
from participant.grpc_link import GrpcLink
from participant.learner import Learner, ProgressFn
from participant.runtime import LearnerFactory, ParticipantRuntime

log = structlog.get_logger("participant.daemon")


def _progress_bar(show: bool):  # type: ignore[no-untyped-def]
    def make(label: str) -> ProgressFn | None:
        if not show:
            return None
        bar = tqdm(desc=label, unit="step", leave=False)

        def update(step: int, total: int, loss: float) -> None:
            bar.total = total
            bar.set_postfix(loss=f"{loss:.3f}")
            bar.update(1)
            if step >= total:
                bar.close()

        return update

    return make


def learner_factory(settings: ParticipantSection, stack: ExitStack) -> LearnerFactory:
    """Build the job's learner; heavy imports happen only in the branch that needs them."""

    def make(config: JobConfig) -> Learner:
        if config.blackbox.enabled:
            from participant.blackbox import BlackboxLearner
            from participant.model_client import ModelServiceClient

            if not settings.model_service:
                raise ConfigError("participant.model_service: this job is black-box; name a model service "
                                  "(host:port of `fedprompt model serve`)")
            client = ModelServiceClient(settings.model_service, settings.retry_initial_s, settings.retry_max_s,
                                        settings.give_up_after_s)
            stack.callback(client.close)
            return BlackboxLearner(config, client)
        import torch

        from fedprompt.models import build_classifier
        from participant.train import GradientLearner

        torch.set_num_threads(settings.threads)
        return GradientLearner(build_classifier(config), config.train)

    return make


def run_daemon(settings: ParticipantSection, progress: bool = True) -> None:
    """Join ``settings.job`` and work until it is done."""
    site = load_site(settings.data_dir)
    identity = settings.name or Path(settings.data_dir).resolve().name
    log.info("participant starting", identity=identity, coordinator=settings.coordinator, job=settings.job,
             train=len(site.train), test=len(site.test))
    with ExitStack() as stack:
        link = GrpcLink(settings.coordinator, identity, settings.retry_initial_s, settings.retry_max_s,
                        settings.give_up_after_s, settings.rpc_timeout_s)
        stack.callback(link.close)
        runtime = ParticipantRuntime(link, site, settings.job, learner_factory(settings, stack),
                                     Path(settings.state_dir) if settings.state_dir else None,
                                     _progress_bar(progress))
        runtime.run()
