"""What members report besides their updates: evaluation metrics on each global version (the job's progress,
example-weighted in ``coordinator.views``) and, with DP, the record-level privacy each one has spent.

Reports are checked like any other input: a metric report names a stored version, at most ``MAX_METRICS``
finite values under printable names, one report per member and version, and no more examples than the
member declared for testing; a privacy report names this job and a round that has begun (its values are
checked by ``coordinator.privacy.check_report``)."""

from __future__ import annotations

import math

from fedprompt.config import DPSection
from fedprompt.coordinator.privacy import check_report
from fedprompt.coordinator.roster import Roster
from fedprompt.coordinator.store import MemberState, Store
from fedprompt.errors import DuplicateUpdate, InvalidRequest, InvalidUpdate, NotFound, StaleRound, quoted
from fedprompt.protocol import PrivacyReport

MAX_METRICS = 32
MAX_METRIC_NAME = 64


class Reports:
    """Checks and stores one job's metric and privacy reports."""

    def __init__(self, job_id: str, store: Store, roster: Roster, dp: DPSection) -> None:
        self.job_id = job_id
        self.store = store
        self.roster = roster
        self.dp = dp

    def metrics(self, participant_id: str, version: int, metrics: dict[str, float], num_examples: int,
                now: float) -> None:
        """Store a member's metrics on global ``version`` (its test split of ``num_examples``)."""
        member = self.roster.touch(participant_id, now)
        latest = self.store.latest_version(self.job_id)
        if latest is None or not 0 <= version <= latest:
            raise NotFound(f"job {self.job_id} has no global version {version}")
        if self.roster.evaluated_on(participant_id, version):
            raise DuplicateUpdate(f"{participant_id} already reported metrics on version {version}")
        if len(metrics) > MAX_METRICS or not all(math.isfinite(v) for v in metrics.values()):
            raise InvalidRequest(f"metrics must be at most {MAX_METRICS} finite values")
        if not all(0 < len(k) <= MAX_METRIC_NAME and k.isprintable() for k in metrics):
            raise InvalidRequest(f"metric names must be 1-{MAX_METRIC_NAME} printable characters")
        if not 0 <= num_examples <= member.num_test:
            raise InvalidRequest(f"num_examples {num_examples} is outside [0, {member.num_test}] (test examples "
                                 "declared at join)")
        self.store.save_metrics(self.job_id, version, participant_id, num_examples, metrics)
        self.roster.mark_evaluated(participant_id, version)

    def privacy(self, participant_id: str, report: PrivacyReport, current_round: int, now: float) -> bool:
        """Store a member's record-level privacy report; True when it declines to train (budget spent), which
        takes it out of every later selection."""
        self.roster.touch(participant_id, now)
        if report.job_id != self.job_id:
            raise NotFound(f"report names job {quoted(report.job_id)}, this is {self.job_id}")
        if not self.dp.enabled:
            raise InvalidUpdate(f"job {self.job_id} does not use differential privacy")
        if not 1 <= report.round <= current_round:
            raise StaleRound(f"privacy report for round {report.round}, the current round is {current_round}")
        self.store.save_privacy_report(self.job_id, check_report(participant_id, report))
        if report.declined:
            self.roster.set_state(participant_id, MemberState.EXHAUSTED)
        return report.declined
