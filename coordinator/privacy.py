"""The coordinator's privacy ledger: participant-level epsilon over rounds, and record-level reports.

Participant level.  Each participant clips its update to C and adds a noise share N(0, sigma^2 C^2 / m),
m = ``job.min_participants`` (``participant/dp.py``); the coordinator aggregates only with at least m
updates, so every released aggregate carries at least N(0, sigma^2 C^2) noise on a sum whose sensitivity to
one participant is C (updates are weighted equally, see ``aggregation.UniformWeights``).  That is one step of
the sampled Gaussian mechanism with noise multiplier sigma and sampling rate q = selected / eligible,
accounted with the shared accountant of ``fedprompt.privacy`` (DP-FedAvg: McMahan et al., "Learning
Differentially Private Recurrent Language Models", ICLR 2018).  The coordinator needs no plaintext for this:
only sigma (from the job config) and q, so it works unchanged when updates are encrypted.  Counting sigma
rather than sigma * sqrt(n / m) for n > m updates is conservative.  Selection samples a fixed number without
replacement while the analysis assumes Poisson sampling: the usual approximation, stated in the README.

The accountant's ``state_dict`` is the job's row of the store's ``privacy_accountants`` table, rewritten after
each accounted round, so the ledger survives a coordinator restart; one that cannot be read pauses its job
(and ends it if started again) rather than restarting at epsilon 0.  A database from before that table holds one ``privacy_ledger`` row per
round instead: the state is rebuilt from them once.  A round that would take epsilon past
``dp.participant_epsilon`` is not opened and the job ends with the reason.

Record level.  Participants report the epsilon their own accountant has spent (``PrivacyReport``); the
coordinator checks and stores the reports and summarises them per round (max and median).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence

import numpy as np
import structlog

from fedprompt.config import DPSection
from fedprompt.coordinator.store import PrivacyRow, Store
from fedprompt.errors import FedPromptError, InvalidUpdate
from fedprompt.privacy import create_accountant
from fedprompt.protocol import PrivacyReport

log = structlog.get_logger("coordinator.privacy")

MAX_REASON = 500


class ParticipantLedger:
    """Participant-level (epsilon, delta) of one job's global prompt, persisted round by round."""

    def __init__(self, job_id: str, dp: DPSection, store: Store) -> None:
        self.job_id = job_id
        self.dp = dp
        self.store = store
        self.accountant = create_accountant(dp.accountant)
        self.error = ""  # why the stored ledger could not be read: no round opens then (fail closed)
        state = store.accountant_state(job_id)
        if state is not None:
            try:
                self.accountant.load_json(state)
            except FedPromptError as exc:
                self.error = f"participant-level privacy ledger of job {job_id} is unreadable ({exc})"
                log.error("privacy ledger unreadable: the job opens no round", job_id=job_id, reason=str(exc))
            return
        legacy = store.legacy_ledger(job_id)
        for sigma, sample_rate in legacy:
            self.accountant.step(noise_multiplier=sigma, sample_rate=sample_rate)
        if legacy:
            store.save_accountant_state(job_id, self.accountant.to_json())
            log.info("participant-level ledger migrated from privacy_ledger rows", job_id=job_id, rounds=len(legacy))

    @property
    def enabled(self) -> bool:
        return self.dp.participant_level

    def epsilon(self) -> float:
        """Participant-level epsilon spent so far (inf when participant-level DP is off)."""
        return self.accountant.get_epsilon(self.dp.participant_delta) if self.enabled else math.inf

    def refusal(self, sample_rate: float) -> str:
        """Why the job must not open another round at this sampling rate (empty: it may)."""
        if self.error:
            return self.error
        if not self.enabled or math.isinf(self.dp.participant_epsilon):
            return ""
        after = self.accountant.epsilon_after(1, noise_multiplier=self.dp.participant_noise_multiplier,
                                              sample_rate=sample_rate, delta=self.dp.participant_delta)
        if after > self.dp.participant_epsilon:
            return (f"participant-level privacy budget reached: another round would spend epsilon {after:.3f} > "
                    f"budget {self.dp.participant_epsilon:g} at delta {self.dp.participant_delta:g} "
                    f"(spent {self.epsilon():.3f})")
        return ""

    def summary(self, round_: int, contributors: Collection[str], sample_rate: float) -> dict[str, float]:
        """Record-level epsilon of a round's contributors (max, median) and, recorded now, participant-level
        epsilon; empty without DP."""
        if not self.dp.enabled:
            return {}
        summary = record_summary([row for row in self.store.privacy_reports(self.job_id, round_)
                                  if row.participant_id in contributors])
        if self.enabled:
            summary["participant_epsilon"] = self.record(round_, sample_rate)
            summary["participant_delta"] = self.dp.participant_delta
        return summary

    def record(self, round_: int, sample_rate: float) -> float:
        """Account one aggregated round and persist the accountant; returns epsilon after it."""
        self.accountant.step(noise_multiplier=self.dp.participant_noise_multiplier, sample_rate=sample_rate)
        self.store.save_accountant_state(self.job_id, self.accountant.to_json())
        epsilon = self.epsilon()
        log.info("participant-level privacy accounted", job_id=self.job_id, round=round_,
                 sample_rate=round(sample_rate, 4), epsilon=round(epsilon, 4))
        return epsilon


def check_report(participant_id: str, report: PrivacyReport) -> PrivacyRow:
    """A record-level report as a storable row, or ``InvalidUpdate`` naming the bad field."""
    if not (math.isfinite(report.epsilon) and report.epsilon >= 0):
        raise InvalidUpdate(f"privacy report: epsilon must be finite and >= 0, got {report.epsilon}")
    if not 0 < report.delta < 1:
        raise InvalidUpdate(f"privacy report: delta must be in (0, 1), got {report.delta}")
    if len(report.reason) > MAX_REASON:
        raise InvalidUpdate(f"privacy report: reason longer than {MAX_REASON} characters")
    if report.declined and not report.reason.strip():
        raise InvalidUpdate("privacy report: a participant that declines must say why")
    return PrivacyRow(participant_id, report.round, report.epsilon, report.delta, report.declined, report.reason)


def record_summary(rows: Sequence[PrivacyRow]) -> dict[str, float]:
    """Max and median record-level epsilon (and the largest delta) over one round's reports."""
    if not rows:
        return {}
    eps = [r.epsilon for r in rows]
    return {"record_epsilon_max": float(max(eps)), "record_epsilon_median": float(np.median(eps)),
            "record_delta_max": float(max(r.delta for r in rows))}
