"""The Ray engine (``[simulation] engine = "ray"``, ``fedprompt simulate --engine ray``): the same simulation,
spread over the processes and machines of a Ray cluster (Moritz et al., "Ray: A Distributed Framework for
Emerging AI Applications", OSDI 2018), as Flower runs its simulations.

Design, and why:

* **The coordinator in one actor.**  ``SimCoordinator`` (the in-process engine's own object, over the real
  ``JobManager``) runs in one actor that declares no CPU: it does bookkeeping while the sites train, and a
  single actor executes one call at a time, which is how the domain expects to be called (the gRPC server
  serialises calls onto its event loop the same way).  It cannot live in the driver: actors cannot call back
  into the process that drives them.
* **Sites reach it through ``RayLink``**, a ``CoordinatorLink`` whose every call is ``LocalLink``'s call made
  inside that actor (``SimCoordinator.call``).  Only the protocol's plain dataclasses and bytes cross.  So each
  site runs the unchanged ``ParticipantRuntime``, and there is no second implementation of a round.
* **A bounded pool of site workers.**  ``workers`` actors (default: the cluster's CPUs // ``cpus_per_worker``,
  at most one per site), each declaring ``cpus_per_worker`` / ``gpus_per_worker`` / ``memory_mb`` to the
  scheduler, load the frozen PLM once and host the ``SiteGroup`` of the sites assigned to them: site ``k`` on
  worker ``k mod workers`` for the whole run, so a site's in-memory state (its learner, keys, privacy ledger,
  rebuilt globals) stays in one place and 1,000 sites load the PLM ``workers`` times, not 1,000.
* **Sweeps in lock-step.**  The driver asks every worker for one ``SiteGroup.sweep`` (the in-process engine's
  step) and waits for all before the next, as the in-process loop finishes a pass over the sites before the
  next: nothing races ahead, and no site is polled more often than another.  The price is that a sweep lasts
  as long as its busiest worker.
* **Same seed, same result.**  Selection is seeded and sorted, every member evaluates every final version, a
  plaintext round aggregates in participant-id order (``coordinator.accumulators``), metrics are averaged in
  participant-id order, local training is seeded per site and round, and a simulated member never counts as
  offline (``engines.coordinator``); so the final global and final metrics equal the in-process engine's,
  bit for bit on a plaintext job.  Only what is random by design differs: DP noise (OS entropy,
  ``participant.dp``) and CKKS encryption noise.  Intermediate rounds' metrics could in principle miss a
  site's report on a version that was superseded before that site's worker reached it.
* **Ray is imported only here**, only when this engine runs; without it one error names the extra to install.
  A local Ray is started for the run (``num_cpus``, no dashboard, worker logs not forwarded) and shut down
  after; a Ray already initialised in this process (a notebook, a test session) or an ``address`` is used as it
  is.  Resources no node can give are refused before any actor is made (a pending actor would wait forever).
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from fedprompt.app.engines import Engine, RaySection
from fedprompt.app.engines.coordinator import Outcome, SimCoordinator
from fedprompt.app.engines.sites import SiteGroup, SitePlan
from fedprompt.config import dump_toml
from fedprompt.crypto.audit import Verdict
from fedprompt.data.shards import SiteData
from fedprompt.errors import ConfigError, FedPromptError, clip, quoted
from fedprompt.protocol import (
    GramKeyState,
    JobDescription,
    JobView,
    JoinInfo,
    KeyState,
    Payload,
    PrivacyReport,
    Task,
    ThresholdKeyState,
)

RAY_MISSING = "the Ray engine needs Ray, an optional extra: pip install 'fedprompt[ray]'"
PREFIX = "simulation.ray"


def import_ray() -> ModuleType:
    """The ``ray`` module, or ``ConfigError`` naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    return ray


def get(refs: Any) -> Any:
    """``ray.get``, re-raising a fedprompt error raised in an actor as itself (one line, as in-process)."""
    import ray
    from ray.exceptions import RayTaskError

    try:
        return ray.get(refs)
    except RayTaskError as exc:
        if isinstance(exc.cause, FedPromptError):
            raise exc.cause from None
        raise


class RayLink:
    """``CoordinatorLink`` into a ``SimCoordinator`` actor: each call is ``LocalLink``'s, made in that actor."""

    def __init__(self, coordinator: Any, identity: str) -> None:
        self.coordinator = coordinator
        self.identity = identity

    def _call(self, method: str, *args: Any) -> Any:
        return get(self.coordinator.call.remote(self.identity, method, args))

    def describe(self, job: str) -> JobDescription:
        return self._call("describe", job)

    def join(self, job: str, num_train: int, num_test: int, vector_size: int,
             exchange_public_key: bytes = b"", exchange_attestation: bytes = b"") -> JoinInfo:
        return self._call("join", job, num_train, num_test, vector_size, exchange_public_key, exchange_attestation)

    def get_task(self, job_id: str, wait_s: float) -> Task:
        return self._call("get_task", job_id, wait_s)

    def download(self, job_id: str, version: int) -> Payload:
        return self._call("download", job_id, version)

    def upload(self, payload: Payload) -> None:
        self._call("upload", payload)

    def report(self, job_id: str, version: int, metrics: dict[str, float], num_examples: int) -> None:
        self._call("report", job_id, version, metrics, num_examples)

    def publish_context(self, job_id: str, public_context: bytes, key_id: bytes, attestation: bytes = b"") -> None:
        self._call("publish_context", job_id, public_context, key_id, attestation)

    def share_key(self, job_id: str, recipient_id: str, sealed_key: bytes) -> None:
        self._call("share_key", job_id, recipient_id, sealed_key)

    def keys(self, job_id: str) -> KeyState:
        return self._call("keys", job_id)

    def report_key_fault(self, job_id: str, reason: str) -> None:
        self._call("report_key_fault", job_id, reason)

    def report_privacy(self, report: PrivacyReport) -> None:
        self._call("report_privacy", report)

    def gram(self, job_id: str, round_: int) -> Payload:
        return self._call("gram", job_id, round_)

    def report_gram(self, job_id: str, round_: int, scalars: list[float]) -> None:
        self._call("report_gram", job_id, round_, scalars)

    def check_bundle(self, job_id: str, round_: int) -> Payload:
        return self._call("check_bundle", job_id, round_)

    def report_check(self, job_id: str, round_: int, verdicts: list[Verdict]) -> None:
        self._call("report_check", job_id, round_, verdicts)

    def threshold_keys(self, job_id: str) -> ThresholdKeyState:
        return self._call("threshold_keys", job_id)

    def publish_share(self, job_id: str, share: bytes, attestation: bytes) -> None:
        self._call("publish_share", job_id, share, attestation)

    def deal(self, job_id: str, sealed: dict[str, bytes]) -> None:
        self._call("deal", job_id, sealed)

    def decryption(self, job_id: str, round_: int) -> Payload:
        return self._call("decryption", job_id, round_)

    def submit_share(self, job_id: str, round_: int, attempt: int, share: bytes) -> None:
        self._call("submit_share", job_id, round_, attempt, share)

    def gram_keys(self, job_id: str) -> GramKeyState:
        return self._call("gram_keys", job_id)

    def publish_gram_key(self, job_id: str, round_: int, element: int, message: bytes, attestation: bytes) -> None:
        self._call("publish_gram_key", job_id, round_, element, message, attestation)


class SiteWorker:
    """A pool actor: the ``SiteGroup`` of the sites assigned to it, built by ``setup`` (a method, not the
    constructor, so that a failure, e.g. a model that does not load, comes back as the error it is)."""

    def __init__(self) -> None:
        self.group: SiteGroup | None = None

    def setup(self, plan: SitePlan, job_id: str, sites: dict[int, SiteData], coordinator: Any, backbone: Any,
              threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.group = SiteGroup(plan, job_id, sites, lambda name: RayLink(coordinator, name), backbone)

    def run(self, method: str, *args: Any) -> Any:
        """``SiteGroup.method(*args)`` on this worker's sites."""
        if self.group is None:
            raise FedPromptError("site worker used before its setup")
        return getattr(self.group, method)(*args)


def _connect(ray: ModuleType, settings: RaySection) -> bool:
    """Start or join Ray unless this process already did; True when this run started (or joined) it."""
    if ray.is_initialized():
        return False
    common = {"log_to_driver": False, "configure_logging": False}
    try:
        if settings.address:
            ray.init(address=settings.address, **common)
        else:
            ray.init(num_cpus=settings.num_cpus or None, include_dashboard=False, **common)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        where = f"the Ray cluster at {quoted(settings.address)}" if settings.address else "a local Ray"
        raise ConfigError(f"{PREFIX}.address: cannot start or reach {where}: {clip(str(exc), 300)}") from None
    return True


def _check_fits(ray: ModuleType, settings: RaySection, workers: int) -> None:
    """Refuse resources that no alive node offers, or a pool the cluster cannot hold at once."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    asks = (("CPU", settings.cpus_per_worker, "cpus_per_worker"), ("GPU", settings.gpus_per_worker, "gpus_per_worker"),
            ("memory", settings.memory_mb * 2**20, "memory_mb"))
    for resource, need, key in asks:
        if need and need > max((n.get(resource, 0.0) for n in nodes), default=0.0):
            raise ConfigError(f"{PREFIX}.{key}: {need:g} {resource} per worker, but no node of the Ray cluster has "
                              f"that much (the cluster: {clip(str(total), 300)})")
        if need * workers > total.get(resource, 0.0):
            raise ConfigError(f"{PREFIX}.workers: {workers} workers need {need * workers:g} {resource} together, the "
                              f"Ray cluster has {total.get(resource, 0.0):g}; ask for fewer workers or less per worker")


class RayEngine(Engine):
    """The coordinator in one actor, the sites on a pool of worker actors (see the module's docstring)."""

    def __init__(self, settings: RaySection, plan: SitePlan, sites: list[SiteData], backbone: Any = None) -> None:
        ray = self.ray = import_ray()
        self.started = _connect(ray, settings)
        self.actors: list[Any] = []
        self.sites = len(sites)
        try:
            cpus = ray.cluster_resources().get("CPU", 1.0)
            count = settings.workers or max(1, int(cpus // settings.cpus_per_worker))
            count = min(count, len(sites))
            _check_fits(ray, settings, count)
            self.coordinator = ray.remote(SimCoordinator).options(num_cpus=0).remote()
            self.actors.append(self.coordinator)
            job_id = get(self.coordinator.create.remote(dump_toml(plan.config)))
            worker = ray.remote(SiteWorker).options(num_cpus=settings.cpus_per_worker,
                                                    num_gpus=settings.gpus_per_worker,
                                                    memory=settings.memory_mb * 2**20 or None)
            self.workers = [worker.remote() for _ in range(count)]
            self.actors += self.workers
            model = ray.put(backbone) if backbone is not None else None  # else each worker loads the job's model
            threads = max(1, int(settings.cpus_per_worker))
            get([w.setup.remote(plan, job_id, {k: sites[k] for k in range(i, len(sites), count)}, self.coordinator,
                                model, threads) for i, w in enumerate(self.workers)])
        except BaseException:
            self.close()
            raise
        self.details = {"engine": "ray", "ray_workers": count, "ray_cpus_per_worker": settings.cpus_per_worker}

    def _site(self, k: int, method: str, *args: Any) -> Any:
        return get(self.workers[k % len(self.workers)].run.remote(method, *args))

    def join(self) -> None:
        for k in range(self.sites):
            self._site(k, "join", k)
        get(self.coordinator.start.remote())

    def sweep(self) -> tuple[bool, bool]:
        results = get([w.run.remote("sweep") for w in self.workers])
        return any(p for p, _ in results), all(f for _, f in results)

    def view(self) -> JobView:
        return get(self.coordinator.view.remote())

    def stalled(self) -> bool:
        return get(self.coordinator.stalled.remote())

    def outcome(self) -> Outcome:
        return get(self.coordinator.outcome.remote())

    def vector_size(self) -> int:
        return self._site(0, "vector_size", 0)

    def plm_params(self) -> int:
        return self._site(0, "plm_params")

    def global_vector(self, version: int) -> np.ndarray:
        return self._site(0, "global_vector", 0, version)

    def predict_proba(self, vector: np.ndarray, texts: list[str]) -> np.ndarray:
        return self._site(0, "predict_proba", 0, vector, texts)

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        if self.started:
            self.ray.shutdown()
            self.started = False
