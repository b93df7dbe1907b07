"""Durable coordinator state in one SQLite file (WAL mode, one transaction per state change).

Holds jobs, memberships, rounds, received-update bookkeeping (who, how big, digest; never the payload),
robust-aggregation decisions (accepted or rejected, with the defence's score), global prompt versions (as the payload bytes the coordinator was given or computed), and reported metrics.
``":memory:"`` gives the same store without a file, for quick experiments.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, name TEXT NOT NULL, config_toml TEXT NOT NULL, state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '', vector_size INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS members (
    job_id TEXT NOT NULL, participant_id TEXT NOT NULL, num_train INTEGER NOT NULL, num_test INTEGER NOT NULL,
    joined_at REAL NOT NULL, last_seen REAL NOT NULL, state TEXT NOT NULL DEFAULT 'active',
    PRIMARY KEY (job_id, participant_id)
);
CREATE TABLE IF NOT EXISTS rounds (
    job_id TEXT NOT NULL, round INTEGER NOT NULL, attempt INTEGER NOT NULL, state TEXT NOT NULL,
    selected TEXT NOT NULL, opened_at REAL NOT NULL, deadline REAL NOT NULL, closed_at REAL NOT NULL DEFAULT 0,
    bytes_up INTEGER NOT NULL DEFAULT 0, bytes_down INTEGER NOT NULL DEFAULT 0, summary TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (job_id, round, attempt)
);
CREATE TABLE IF NOT EXISTS updates (
    job_id TEXT NOT NULL, round INTEGER NOT NULL, attempt INTEGER NOT NULL, participant_id TEXT NOT NULL,
    num_examples INTEGER NOT NULL, num_bytes INTEGER NOT NULL, sha256 TEXT NOT NULL, received_at REAL NOT NULL,
    PRIMARY KEY (job_id, round, attempt, participant_id)
);
CREATE TABLE IF NOT EXISTS prompts (
    job_id TEXT NOT NULL, version INTEGER NOT NULL, encoding TEXT NOT NULL, data BLOB NOT NULL,
    created_at REAL NOT NULL, PRIMARY KEY (job_id, version)
);
CREATE TABLE IF NOT EXISTS decisions (
    job_id TEXT NOT NULL, round INTEGER NOT NULL, attempt INTEGER NOT NULL, participant_id TEXT NOT NULL,
    accepted INTEGER NOT NULL, score REAL NOT NULL, score_name TEXT NOT NULL, defence TEXT NOT NULL,
    decided_at REAL NOT NULL, PRIMARY KEY (job_id, round, attempt, participant_id)
);
CREATE TABLE IF NOT EXISTS metrics (
    job_id TEXT NOT NULL, version INTEGER NOT NULL, participant_id TEXT NOT NULL, num_examples INTEGER NOT NULL,
    metrics TEXT NOT NULL, reported_at REAL NOT NULL, PRIMARY KEY (job_id, version, participant_id)
);
"""


@dataclass(frozen=True)
class JobRow:
    job_id: str
    name: str
    config_toml: str
    state: str
    reason: str
    vector_size: int
    created_at: float


@dataclass(frozen=True)
class MemberRow:
    job_id: str
    participant_id: str
    num_train: int
    num_test: int
    joined_at: float
    last_seen: float
    state: str


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
class DecisionRow:
    job_id: str
    round: int
    attempt: int
    participant_id: str
    accepted: bool
    score: float
    score_name: str
    defence: str


@dataclass(frozen=True)
class MetricRow:
    participant_id: str
    num_examples: int
    metrics: dict[str, float]


class Store:
    """All coordinator persistence. Every public write is one transaction."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _all(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

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
        return [JobRow(*r) for r in rows]  # type: ignore[arg-type]

    # members
    def upsert_member(self, row: MemberRow) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO members VALUES (?,?,?,?,?,?,?) ON CONFLICT(job_id, participant_id) DO UPDATE SET "
                "num_train=excluded.num_train, num_test=excluded.num_test, last_seen=excluded.last_seen, "
                "state=excluded.state",
                (row.job_id, row.participant_id, row.num_train, row.num_test, row.joined_at, row.last_seen, row.state),
            )

    def members(self, job_id: str) -> list[MemberRow]:
        rows = self._all("SELECT job_id,participant_id,num_train,num_test,joined_at,last_seen,state FROM members "
                         "WHERE job_id=? ORDER BY joined_at", (job_id,))
        return [MemberRow(*r) for r in rows]  # type: ignore[arg-type]

    # rounds
    def save_round(self, row: RoundRow) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO rounds VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (row.job_id, row.round, row.attempt, row.state, json.dumps(list(row.selected)), row.opened_at,
                 row.deadline, row.closed_at, row.bytes_up, row.bytes_down, json.dumps(row.summary)),
            )

    def rounds(self, job_id: str) -> list[RoundRow]:
        rows = self._all("SELECT job_id,round,attempt,state,selected,opened_at,deadline,closed_at,bytes_up,bytes_down,"
                         "summary FROM rounds WHERE job_id=? ORDER BY round, attempt", (job_id,))
        return [RoundRow(r[0], r[1], r[2], r[3], tuple(json.loads(r[4])), r[5], r[6], r[7], r[8], r[9],  # type: ignore[arg-type]
                         json.loads(r[10])) for r in rows]  # type: ignore[arg-type]

    # updates (bookkeeping only: the payload itself is never stored)
    def record_update(self, job_id: str, round_: int, attempt: int, participant_id: str, num_examples: int,
                      num_bytes: int, sha256_hex: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO updates VALUES (?,?,?,?,?,?,?,?)",
                       (job_id, round_, attempt, participant_id, num_examples, num_bytes, sha256_hex, time.time()))

    def update_counts(self, job_id: str) -> dict[str, int]:
        rows = self._all("SELECT participant_id, COUNT(*) FROM updates WHERE job_id=? GROUP BY participant_id", (job_id,))
        return {str(r[0]): int(r[1]) for r in rows}  # type: ignore[call-overload]

    # robust-aggregation decisions
    def save_decisions(self, rows: list[DecisionRow]) -> None:
        now = time.time()
        with self._tx() as db:
            db.executemany("INSERT OR REPLACE INTO decisions VALUES (?,?,?,?,?,?,?,?,?)",
                           [(r.job_id, r.round, r.attempt, r.participant_id, int(r.accepted), r.score, r.score_name,
                             r.defence, now) for r in rows])

    def decisions(self, job_id: str) -> list[DecisionRow]:
        rows = self._all("SELECT job_id,round,attempt,participant_id,accepted,score,score_name,defence FROM decisions "
                         "WHERE job_id=? ORDER BY round, attempt, participant_id", (job_id,))
        return [DecisionRow(str(r[0]), int(r[1]), int(r[2]), str(r[3]), bool(r[4]), float(r[5]),  # type: ignore[call-overload, arg-type]
                            str(r[6]), str(r[7])) for r in rows]

    # global prompt versions
    def save_prompt(self, job_id: str, version: int, encoding: str, data: bytes) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO prompts VALUES (?,?,?,?,?)", (job_id, version, encoding, data, time.time()))

    def prompt(self, job_id: str, version: int) -> tuple[str, bytes] | None:
        rows = self._all("SELECT encoding, data FROM prompts WHERE job_id=? AND version=?", (job_id, version))
        return (str(rows[0][0]), bytes(rows[0][1])) if rows else None  # type: ignore[call-overload]

    def latest_version(self, job_id: str) -> int | None:
        rows = self._all("SELECT MAX(version) FROM prompts WHERE job_id=?", (job_id,))
        return None if rows[0][0] is None else int(rows[0][0])  # type: ignore[call-overload]

    # metrics
    def save_metrics(self, job_id: str, version: int, participant_id: str, num_examples: int,
                     metrics: dict[str, float]) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO metrics VALUES (?,?,?,?,?,?)",
                       (job_id, version, participant_id, num_examples, json.dumps(metrics), time.time()))

    def metrics(self, job_id: str, version: int) -> list[MetricRow]:
        rows = self._all("SELECT participant_id, num_examples, metrics FROM metrics WHERE job_id=? AND version=? "
                         "ORDER BY participant_id", (job_id, version))
        return [MetricRow(str(r[0]), int(r[1]), json.loads(str(r[2]))) for r in rows]  # type: ignore[call-overload]
