"""Durable coordinator state in one SQLite file or PostgreSQL database (one transaction per state change).

Holds jobs, memberships, rounds, received-update bookkeeping (who, how big, digest; never the payload),
global prompt versions (as the payload bytes the coordinator was given or computed: for encrypted jobs the
encrypted initial prompt and each round's encrypted aggregate), reported metrics, and for encrypted jobs the
key relay: public contexts, participants' X25519 public keys and sealed keys the coordinator cannot open; and
privacy: the participant-level accountant's state (``fedprompt.privacy``, rewritten after each aggregated round)
and the record-level epsilon each participant reports.
Also robust-aggregation decisions (accepted or rejected, with the defence's score), and the admin audit trail
(``coordinator.audit``).  The tables and their versioned migrations are in ``coordinator.schema``; what
differs between the two databases is in ``coordinator.sqlbackend``.  ``":memory:"`` gives the same store
without a file, for quick experiments.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fedprompt.coordinator.keystore import KeyStore
from fedprompt.coordinator.schema import migrate
from fedprompt.coordinator.sqlbackend import Backend, Row, Writer, connect, upsert
from fedprompt.errors import Deposed
from fedprompt.protocol import AuditView, FlagView


@dataclass(frozen=True)
class JobRow:
    job_id: str
    name: str
    config_toml: str
    state: str
    reason: str
    vector_size: int
    created_at: float


class JobState(enum.Enum):
    """A job's lifecycle (``coordinator.runtime``), stored as its value."""

    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


TERMINAL = (JobState.DONE, JobState.CANCELLED, JobState.FAILED)


class MemberState(enum.Enum):
    """A member's standing in its job (``coordinator.roster``), stored as its value."""

    ACTIVE = "active"
    EXHAUSTED = "budget_exhausted"  # declined to train: its record-level privacy budget is spent
    QUARANTINED = "quarantined"
    REVOKED = "revoked"


@dataclass(frozen=True)
class MemberRow:
    job_id: str
    participant_id: str
    num_train: int
    num_test: int
    joined_at: float
    last_seen: float
    state: MemberState


@dataclass(frozen=True)
class RoundRow:
    job_id: str
    round: int
    attempt: int
    state: str
    selected: tuple[str, ...]
    opened_at: float
    deadline: float
    closed_at: float
    bytes_up: int
    bytes_down: int
    summary: dict[str, float]


@dataclass(frozen=True)
class PrivacyRow:
    """A participant's record-level privacy report for one round."""

    participant_id: str
    round: int
    epsilon: float
    delta: float
    declined: bool
    reason: str


@dataclass(frozen=True)
class MetricRow:
    participant_id: str
    num_examples: int
    metrics: dict[str, float]


class Store(KeyStore):
    """All coordinator persistence. Every public write is one transaction."""

    def __init__(self, location: str | Path) -> None:
        """``location``: a SQLite file's path (``":memory:"`` for none), ``sqlite:///PATH`` or
        ``postgresql://…``; the database is migrated to the current schema on open."""
        self._sql: Backend = connect(location)
        self.location = self._sql.location
        self.integrity_error = self._sql.integrity_error
        self.unavailable_error = self._sql.unavailable_error
        self.token: int | None = None  # the fencing token every write checks (``fence``); None: no lease
        try:
            migrate(self._sql)
        except BaseException:
            self._sql.close()
            raise

    def close(self) -> None:
        self._sql.close()

    @contextmanager
    def _tx(self) -> Iterator[Writer]:
        """A write transaction; once ``fence`` is set, it first checks that token is still the lease's and holds
        the lease row until it commits, so a takeover waits for it, and a deposed replica writes nothing."""
        with self._sql.transaction() as tx:
            if self.token is not None and tx.execute("UPDATE coordinator_lease SET token = token WHERE id = 1 AND "
                                                     "token = ?", (self.token,)).rowcount != 1:
                raise Deposed(f"{self.location}: this coordinator's lease (token {self.token}) was taken over; "
                              "it writes nothing more")
            yield tx

    def _all(self, sql: str, args: tuple[object, ...] = ()) -> list[Row]:
        return self._sql.rows(sql, args)

    # the replicas' lease (``coordinator.lease``), timed by the database's clock
    def acquire_lease(self, holder: str, ttl_s: float) -> int | None:
        """Take the lease if it has lapsed (or was released) and return the new fencing token; None while
        another holder's lease runs."""
        now = self._sql.now
        with self._sql.transaction() as tx:
            row = tx.execute(f"UPDATE coordinator_lease SET holder = ?, token = token + 1, expires_at = {now} + ? "
                             f"WHERE id = 1 AND expires_at < {now} RETURNING token", (holder, ttl_s)).fetchone()
        return None if row is None else int(row[0])

    def renew_lease(self, token: int, ttl_s: float) -> bool:
        """Extend the lease ``token`` holds; False when another replica has taken it since."""
        with self._sql.transaction() as tx:
            return tx.execute(f"UPDATE coordinator_lease SET expires_at = {self._sql.now} + ? WHERE id = 1 AND "
                              "token = ?", (ttl_s, token)).rowcount == 1

    def release_lease(self, token: int) -> None:
        """Let the lease lapse now (a graceful stop), so a standby takes over without waiting for it."""
        with self._sql.transaction() as tx:
            tx.execute("UPDATE coordinator_lease SET expires_at = 0 WHERE id = 1 AND token = ?", (token,))

    def lease(self) -> tuple[str, int, float]:
        """The holder, its token and the seconds until its lease lapses (negative: lapsed)."""
        holder, token, left = self._all(f"SELECT holder, token, expires_at - {self._sql.now} FROM coordinator_lease")[0]
        return str(holder), int(token), float(left)

    def fence(self, token: int) -> None:
        """From now on every write checks that ``token`` is still the lease's (``Deposed`` when not)."""
        self.token = token

    # jobs
    def add_job(self, job_id: str, name: str, config_toml: str, state: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO jobs VALUES (?,?,?,?,?,?,?)", (job_id, name, config_toml, state, "", 0, time.time()))

    def set_job_state(self, job_id: str, state: str, reason: str = "") -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET state=?, reason=? WHERE job_id=?", (state, reason, job_id))

    def set_vector_size(self, job_id: str, size: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET vector_size=? WHERE job_id=?", (size, job_id))

    def jobs(self) -> list[JobRow]:
        rows = self._all("SELECT job_id,name,config_toml,state,reason,vector_size,created_at FROM jobs ORDER BY created_at")
        return [JobRow(*r) for r in rows]

    # members
    def upsert_member(self, row: MemberRow) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO members VALUES (?,?,?,?,?,?,?) ON CONFLICT(job_id, participant_id) DO UPDATE SET "
                "num_train=excluded.num_train, num_test=excluded.num_test, last_seen=excluded.last_seen, "
                "state=excluded.state",
                (row.job_id, row.participant_id, row.num_train, row.num_test, row.joined_at, row.last_seen, row.state.value),
            )

    def members(self, job_id: str) -> list[MemberRow]:
        rows = self._all("SELECT job_id,participant_id,num_train,num_test,joined_at,last_seen,state FROM members "
                         "WHERE job_id=? ORDER BY joined_at", (job_id,))
        return [MemberRow(str(r[0]), str(r[1]), int(r[2]), int(r[3]), float(r[4]), float(r[5]),
                          MemberState(r[6])) for r in rows]

    # rounds
    def save_round(self, row: RoundRow) -> None:
        with self._tx() as db:
            _write_round(db, row)

    def complete_round(self, row: RoundRow, encoding: str, data: bytes) -> None:
        """The round's new global version and its closed row in one transaction: a crash between the two would
        leave a version whose round still looks in flight, with no summary."""
        with self._tx() as db:
            _write_round(db, row)
            _write_prompt(db, row.job_id, row.round, encoding, data)

    def rounds(self, job_id: str) -> list[RoundRow]:
        rows = self._all("SELECT job_id,round,attempt,state,selected,opened_at,deadline,closed_at,bytes_up,bytes_down,"
                         "summary FROM rounds WHERE job_id=? ORDER BY round, attempt", (job_id,))
        return [RoundRow(r[0], r[1], r[2], r[3], tuple(json.loads(r[4])), r[5], r[6], r[7], r[8], r[9],
                         json.loads(r[10])) for r in rows]

    # updates (bookkeeping only: the payload itself is never stored)
    def record_update(self, job_id: str, round_: int, attempt: int, participant_id: str, num_examples: int,
                      num_bytes: int, sha256_hex: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO updates VALUES (?,?,?,?,?,?,?,?)",
                       (job_id, round_, attempt, participant_id, num_examples, num_bytes, sha256_hex, time.time()))

    def received_digests(self, job_id: str, round_: int, participant_id: str) -> dict[int, str]:
        """The SHA-256 (hex) of each update ``participant_id`` had accepted for ``round_``, by attempt."""
        rows = self._all("SELECT attempt, sha256 FROM updates WHERE job_id=? AND round=? AND participant_id=?",
                         (job_id, round_, participant_id))
        return {int(r[0]): str(r[1]) for r in rows}

    def update_counts(self, job_id: str) -> dict[str, int]:
        rows = self._all("SELECT participant_id, COUNT(*) FROM updates WHERE job_id=? GROUP BY participant_id", (job_id,))
        return {str(r[0]): int(r[1]) for r in rows}

    # robust-aggregation decisions
    def save_decisions(self, job_id: str, rows: list[FlagView]) -> None:
        now = time.time()
        with self._tx() as db:
            db.executemany(_DECISION,
                           [(job_id, r.round, r.attempt, r.participant_id, int(r.accepted), r.score, r.score_name,
                             r.defence, now) for r in rows])

    def decisions(self, job_id: str) -> list[FlagView]:
        rows = self._all("SELECT round,attempt,participant_id,accepted,score,score_name,defence FROM decisions "
                         "WHERE job_id=? ORDER BY round, attempt, participant_id", (job_id,))
        return [FlagView(int(r[0]), int(r[1]), str(r[2]), bool(r[3]), float(r[4]),
                         str(r[5]), str(r[6])) for r in rows]

    # global prompt versions
    def save_prompt(self, job_id: str, version: int, encoding: str, data: bytes) -> None:
        with self._tx() as db:
            _write_prompt(db, job_id, version, encoding, data)

    def prompt(self, job_id: str, version: int) -> tuple[str, bytes] | None:
        rows = self._all("SELECT encoding, data FROM prompts WHERE job_id=? AND version=?", (job_id, version))
        return (str(rows[0][0]), bytes(rows[0][1])) if rows else None

    def latest_version(self, job_id: str) -> int | None:
        rows = self._all("SELECT MAX(version) FROM prompts WHERE job_id=?", (job_id,))
        return None if rows[0][0] is None else int(rows[0][0])

    # metrics
    def save_metrics(self, job_id: str, version: int, participant_id: str, num_examples: int,
                     metrics: dict[str, float]) -> None:
        with self._tx() as db:
            db.execute(_METRICS,
                       (job_id, version, participant_id, num_examples, json.dumps(metrics), time.time()))

    def evaluated(self, job_id: str) -> dict[str, set[int]]:
        """The global versions each participant has reported metrics on (rebuilt on resume)."""
        out: dict[str, set[int]] = {}
        for participant_id, version in self._all("SELECT participant_id, version FROM metrics WHERE job_id=?", (job_id,)):
            out.setdefault(str(participant_id), set()).add(int(version))
        return out

    def metrics(self, job_id: str, version: int) -> list[MetricRow]:
        rows = self._all("SELECT participant_id, num_examples, metrics FROM metrics WHERE job_id=? AND version=? "
                         "ORDER BY participant_id", (job_id, version))
        return [MetricRow(str(r[0]), int(r[1]), json.loads(str(r[2]))) for r in rows]

    def metric_means(self, job_id: str, version: int) -> tuple[dict[str, float], int]:
        """The example-weighted mean of each metric reported on ``version``, and the number of reports.

        Each metric is averaged over the reports that carry it (e.g. pseudo-labelling metrics come only from the
        participants that trained in that round), never diluted by zeros from the others.  The database sums them
        (``Backend.json_pairs``): an admin's status asks this of every version, and decoding each report in Python cost
        the coordinator ~40 ms a version at 3,000 participants.
        """
        [(count,)] = self._all("SELECT COUNT(*) FROM metrics WHERE job_id=? AND version=?", (job_id, version))
        pairs = self._sql.json_pairs.format(column="m.metrics")
        rows = self._all("SELECT j.key, SUM(CAST(j.value AS DOUBLE PRECISION) * m.num_examples), SUM(m.num_examples) "
                         f"FROM metrics AS m, {pairs} AS j WHERE m.job_id=? AND m.version=? GROUP BY j.key "
                         "ORDER BY j.key", (job_id, version))
        return {str(k): float(s) / int(t) for k, s, t in rows if t}, int(count)

    # audit trail (``coordinator.audit``)
    def record_audit(self, identity: str, action: str, job_id: str, arguments: str, outcome: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO audit (at, identity, action, job_id, arguments, outcome) VALUES (?,?,?,?,?,?)",
                       (time.time(), identity, action, job_id, arguments, outcome))

    def audit(self, job_id: str = "", limit: int = 0) -> list[AuditView]:
        """Admin actions oldest first: of one job (``job_id`` empty: all), the latest ``limit`` (0: all)."""
        where, args = ("WHERE job_id=?", (job_id,)) if job_id else ("", ())
        rows = self._all(f"SELECT seq, at, identity, action, job_id, arguments, outcome FROM audit {where} "
                         f"ORDER BY seq DESC{' LIMIT ?' if limit else ''}", (*args, limit) if limit else args)
        return [AuditView(int(r[0]), float(r[1]), str(r[2]), str(r[3]), str(r[4]), json.loads(str(r[5])),
                          str(r[6])) for r in reversed(rows)]

    # backup
    def backup(self, destination: str | Path) -> None:
        """A consistent copy of the whole database while the coordinator keeps running (SQLite online backup; a
        PostgreSQL store refuses, naming pg_dump)."""
        self._sql.backup(destination)

    # privacy
    def save_accountant_state(self, job_id: str, state: str) -> None:
        """The job's participant-level accountant (its ``state_dict`` as JSON), replacing the previous one."""
        with self._tx() as db:
            db.execute(_ACCOUNTANT, (job_id, state, time.time()))

    def accountant_state(self, job_id: str) -> str | None:
        rows = self._all("SELECT state FROM privacy_accountants WHERE job_id=?", (job_id,))
        return str(rows[0][0]) if rows else None

    def legacy_ledger(self, job_id: str) -> list[tuple[float, float]]:
        """(noise_multiplier, sample_rate) of each round an older coordinator accounted as a ``privacy_ledger``
        row, in round order; empty when the database never had that table.  Read once, to migrate."""
        if not self._sql.has_table("privacy_ledger"):
            return []
        rows = self._all("SELECT noise_multiplier, sample_rate FROM privacy_ledger WHERE job_id=? ORDER BY round",
                         (job_id,))
        return [(float(r[0]), float(r[1])) for r in rows]

    def save_privacy_report(self, job_id: str, row: PrivacyRow) -> None:
        with self._tx() as db:
            db.execute(_PRIVACY_REPORT,
                       (job_id, row.participant_id, row.round, row.epsilon, row.delta, int(row.declined), row.reason,
                        time.time()))

    def privacy_reports(self, job_id: str, round_: int | None = None) -> list[PrivacyRow]:
        """Reports of one round, or (``round_`` None) each participant's latest report."""
        if round_ is None:
            sql = ("SELECT participant_id, round, epsilon, delta, declined, reason FROM record_privacy r WHERE job_id=? "
                   "AND round = (SELECT MAX(round) FROM record_privacy WHERE job_id=r.job_id AND "
                   "participant_id=r.participant_id) ORDER BY participant_id")
            rows = self._all(sql, (job_id,))
        else:
            rows = self._all("SELECT participant_id, round, epsilon, delta, declined, reason FROM record_privacy "
                             "WHERE job_id=? AND round=? ORDER BY participant_id", (job_id, round_))
        return [PrivacyRow(str(r[0]), int(r[1]), float(r[2]), float(r[3]), bool(r[4]), str(r[5]))
                for r in rows]


def _write_round(db: Writer, row: RoundRow) -> None:
    db.execute(_ROUND,
               (row.job_id, row.round, row.attempt, row.state, json.dumps(list(row.selected)), row.opened_at,
                row.deadline, row.closed_at, row.bytes_up, row.bytes_down, json.dumps(row.summary)))


def _write_prompt(db: Writer, job_id: str, version: int, encoding: str, data: bytes) -> None:
    db.execute("INSERT INTO prompts VALUES (?,?,?,?,?)", (job_id, version, encoding, data, time.time()))


_ROUND = upsert("rounds", "job_id, round, attempt, state, selected, opened_at, deadline, closed_at, bytes_up, "
                 "bytes_down, summary", "job_id, round, attempt")
_DECISION = upsert("decisions", "job_id, round, attempt, participant_id, accepted, score, score_name, defence, "
                    "decided_at", "job_id, round, attempt, participant_id")
_METRICS = upsert("metrics", "job_id, version, participant_id, num_examples, metrics, reported_at",
                   "job_id, version, participant_id")
_ACCOUNTANT = upsert("privacy_accountants", "job_id, state, updated_at", "job_id")
_PRIVACY_REPORT = upsert("record_privacy", "job_id, participant_id, round, epsilon, delta, declined, reason, "
                          "reported_at", "job_id, participant_id, round")
