"""The participant daemon: one institution's process, talking gRPC to the coordinator.

Heavy imports (torch, the PLM) happen only when the job is a gradient job: a black-box participant queries a
model service and never loads model weights (``tests/integration/test_blackbox.py`` checks its imports).
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

import structlog
from tqdm import tqdm

from fedprompt.config import JobConfig, ParticipantSection
from fedprompt.crypto.attest import KeyCredentials
from fedprompt.data.shards import load_site
from fedprompt.errors import ConfigError
from fedprompt.participant.grpc_link import GrpcLink
from fedprompt.participant.heartbeat import Heartbeat
from fedprompt.participant.learner import Learner, ProgressFn
from fedprompt.participant.metrics import ParticipantMetrics
from fedprompt.participant.runtime import LearnerFactory, ParticipantRuntime
from fedprompt.wire.channel import ClientTls

log = structlog.get_logger("participant.daemon")


def _progress_bar(show: bool) -> Callable[[str], ProgressFn | None]:
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


class Stopped(Exception):
    """Raised in the main thread by SIGTERM/SIGINT when no task is in hand (or on a second signal)."""


def install_stop_handler(runtime: ParticipantRuntime) -> None:
    """SIGTERM/SIGINT: idle -> stop at once; mid-task -> finish the task (its upload is idempotent), then stop;
    a second signal stops at once."""

    def handle(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if runtime.stop.is_set() or not runtime.busy:
            stage = "a second signal, mid-task" if runtime.busy else "idle"
            runtime.stop.set()
            raise Stopped(f"{name} ({stage})")
        runtime.stop.set()
        log.info("stop requested: finishing the current task first", signal=name)

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def learner_factory(settings: ParticipantSection, tls: ClientTls | None, stack: ExitStack) -> LearnerFactory:
    """Build the job's learner; heavy imports happen only in the branch that needs them.  A black-box learner
    reaches its model service with the site's own credentials ``tls`` (mTLS unless ``--insecure``)."""

    def make(config: JobConfig) -> Learner:
        if config.blackbox.enabled:
            from fedprompt.participant.blackbox import BlackboxLearner
            from fedprompt.participant.model_client import ModelServiceClient

            if not settings.model_service:
                raise ConfigError("participant.model_service: this job is black-box; name a model service "
                                  "(host:port of `fedprompt model serve`)")
            client = ModelServiceClient(settings.model_service, settings.retry_initial_s, settings.retry_max_s,
                                        settings.give_up_after_s,
                                        tls=None if tls is None else dataclasses.replace(tls, server_name=""))
            stack.callback(client.close)
            return BlackboxLearner(config, client)
        import torch

        from fedprompt.models import build_model, resolve_placement
        from fedprompt.participant.train import GradientLearner

        torch.set_num_threads(settings.threads)
        placement = resolve_placement(settings.device, settings.dtype, "participant")
        model = build_model(config, placement=placement)
        log.info("tuning", model=config.model.path, placement=placement.label, method=config.peft.method,
                 exchanged_floats=model.vector_size, plm_params=model.plm_parameters,
                 exchanged_over_plm=model.vector_size / model.plm_parameters)
        return GradientLearner(model, config.train)

    return make


def run_daemon(settings: ParticipantSection, progress: bool = True) -> None:
    """Join ``settings.job`` and work until it is done or the process is asked to stop."""
    site = load_site(settings.data_dir, settings.format)
    tls = None if settings.insecure else ClientTls(settings.ca_cert, settings.cert, settings.key,
                                                   settings.server_name)
    if tls is None:
        identity = settings.name or Path(settings.data_dir).resolve().name
        log.warning("participant running with --insecure: no TLS, the coordinator cannot verify who we are")
    else:
        identity = tls.identity()
    # the same certificate signs this site's encrypted-job keys, and the same CA checks the others' (crypto.attest)
    credentials = None if tls is None else KeyCredentials.from_files(Path(tls.ca_cert), Path(tls.cert), Path(tls.key))
    log.info("participant starting", identity=identity, coordinator=settings.coordinator, job=settings.job,
             mtls=tls is not None, train=len(site.train), test=len(site.test))
    with ExitStack() as stack:
        link = GrpcLink(settings.coordinator, identity, settings.retry_initial_s, settings.retry_max_s,
                        settings.give_up_after_s, settings.rpc_timeout_s, tls=tls)
        stack.callback(link.close)
        metrics = ParticipantMetrics()
        if settings.metrics_listen:
            port = metrics.endpoint.serve(settings.metrics_listen, "participant.metrics_listen")
            stack.callback(metrics.endpoint.close)
            log.info("metrics serving", address=settings.metrics_listen, port=port, path="/metrics")
        runtime = ParticipantRuntime(link, site, settings.job, learner_factory(settings, tls, stack),
                                     Path(settings.state_dir) if settings.state_dir else None, _progress_bar(progress),
                                     events=metrics, credentials=credentials)
        install_stop_handler(runtime)
        try:
            info = runtime.join()
            with Heartbeat(link, info.job_id, settings.heartbeat_s):
                runtime.run()
        except Stopped as exc:
            log.info("participant stopped", identity=identity, signal=str(exc))
        else:
            if runtime.stop.is_set():
                log.info("participant stopped", identity=identity, signal="after finishing its task")
