"""The coordinator's Prometheus metrics: counters fed by the rounds as things happen (``RoundEvents``), gauges
read from the job manager at each scrape, all in a registry of this coordinator's own (several coordinators may
share a process, as in tests), served over HTTP when ``metrics_listen`` names an address.

Label values come from small sets: job ids (one series per job, as ``admin list`` shows them), job states, and
rejection reasons (an error type, or a defence's name)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from fedprompt.coordinator.events import RoundEvents
from fedprompt.coordinator.jobs import JobManager
from fedprompt.coordinator.store import JobState
from fedprompt.exporter import MetricsEndpoint

#: Round durations run from seconds (a small plaintext job) to the round deadline (hours at most).
ROUND_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
#: An encrypted Gram matrix takes tens of milliseconds for a few small updates to minutes for many large ones.
GRAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class JobGauges(Collector):
    """Jobs by state, members online and participant-level epsilon per job, read when scraped, so they are never
    stale and need no bookkeeping in the domain."""

    def __init__(self, jobs: JobManager) -> None:
        self.jobs = jobs

    def collect(self) -> Iterator[GaugeMetricFamily]:
        states = GaugeMetricFamily("fedprompt_jobs", "Jobs by state.", labels=["state"])
        online = GaugeMetricFamily("fedprompt_members_online", "Members online, per job.", labels=["job_id"])
        epsilon = GaugeMetricFamily("fedprompt_participant_epsilon_spent",
                                    "Participant-level epsilon spent, per job with participant-level DP.",
                                    labels=["job_id"])
        runtimes = list(self.jobs.jobs.values())  # the scrape runs on its own thread: iterate a copy
        for state in JobState:
            states.add_metric([state.value], sum(job.state is state for job in runtimes))
        for job in runtimes:
            online.add_metric([job.job_id], len(job.online()))
            if job.privacy.enabled:
                epsilon.add_metric([job.job_id], job.privacy.epsilon())
        yield from (states, online, epsilon)


class CoordinatorMetrics(RoundEvents):
    """Every series the coordinator exports, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rounds_completed = Counter("fedprompt_rounds_completed", "Round attempts that stored a new version.",
                                        ["job_id"], registry=r)
        self.rounds_failed = Counter("fedprompt_rounds_failed", "Round attempts closed without a new version.",
                                     ["job_id"], registry=r)
        self.round_seconds = Histogram("fedprompt_round_duration_seconds",
                                       "Seconds from a round attempt's opening to its new version.",
                                       buckets=ROUND_BUCKETS, registry=r)
        self.accepted = Counter("fedprompt_updates_accepted", "Updates folded into a round.", ["job_id"], registry=r)
        self.rejected = Counter("fedprompt_updates_rejected",
                                "Uploads refused (reason: the error type) and updates a defence rejected (its name).",
                                ["reason"], registry=r)
        self.bytes_in = Counter("fedprompt_update_bytes_received", "Bytes of accepted updates.", registry=r)
        self.bytes_out = Counter("fedprompt_global_bytes_sent", "Bytes of global versions served to members.",
                                 registry=r)
        self.gram_seconds = Histogram("fedprompt_gram_step_seconds", "Seconds to compute an encrypted Gram matrix.",
                                      buckets=GRAM_BUCKETS, registry=r)
        self.endpoint = MetricsEndpoint(r)

    def watch(self, jobs: JobManager) -> None:
        """Read the per-job gauges from ``jobs`` at each scrape."""
        self.registry.register(JobGauges(jobs))

    def round_completed(self, job_id: str, seconds: float) -> None:
        self.rounds_completed.labels(job_id).inc()
        self.round_seconds.observe(max(0.0, seconds))

    def round_failed(self, job_id: str) -> None:
        self.rounds_failed.labels(job_id).inc()

    def update_accepted(self, job_id: str, num_bytes: int) -> None:
        self.accepted.labels(job_id).inc()
        self.bytes_in.inc(num_bytes)

    def updates_rejected(self, job_id: str, reason: str, count: int = 1) -> None:
        self.rejected.labels(reason).inc(count)

    def served(self, job_id: str, num_bytes: int) -> None:
        self.bytes_out.inc(num_bytes)

    def gram_computed(self, job_id: str, seconds: float) -> None:
        self.gram_seconds.observe(seconds)
