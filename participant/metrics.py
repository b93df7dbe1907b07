"""A participant daemon's Prometheus metrics (rounds trained, updates and bytes sent, the last round's training
seconds, record-level epsilon spent), in a registry of its own, served when ``metrics_listen`` names an address."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from fedprompt.exporter import MetricsEndpoint
from fedprompt.participant.runtime import TrainingEvents


class ParticipantMetrics(TrainingEvents):
    """The site's series, fed by its ``ParticipantRuntime`` as rounds are trained and updates sent."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.rounds_trained = Counter("fedprompt_participant_rounds_trained", "Rounds trained locally.", registry=r)
        self.updates_sent = Counter("fedprompt_participant_updates_sent", "Updates the coordinator received.",
                                    registry=r)
        self.bytes_sent = Counter("fedprompt_participant_update_bytes_sent", "Bytes of updates sent.", registry=r)
        self.last_round_seconds = Gauge("fedprompt_participant_last_round_seconds",
                                        "Seconds the last round's local training took.", registry=r)
        self.epsilon = Gauge("fedprompt_participant_record_epsilon_spent",
                             "Record-level epsilon this site has spent (jobs with DP-SGD).", registry=r)
        self.endpoint = MetricsEndpoint(r)

    def trained(self, seconds: float, epsilon: float | None) -> None:
        self.rounds_trained.inc()
        self.last_round_seconds.set(seconds)
        if epsilon is not None:
            self.epsilon.set(epsilon)

    def sent(self, num_bytes: int) -> None:
        self.updates_sent.inc()
        self.bytes_sent.inc(num_bytes)
