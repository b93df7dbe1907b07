"""The coordinator store's schema as ordered migrations, and the code that brings a file up to date.

A file records its schema version in ``PRAGMA user_version``.  Opening one applies, in order, each migration
above that version, each in its own transaction together with the version bump, so a crash mid-upgrade leaves
the file at the last complete version.  Files written before versioning existed have version 0 and version 1's
tables; version 1 only creates missing tables, so it serves them and a new empty file alike.  A file from a
newer coordinator is refused rather than written by code that does not know its tables.
"""

from __future__ import annotations

import sqlite3

from fedprompt.errors import SchemaTooNew

V1 = """
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
CREATE TABLE IF NOT EXISTS he_contexts (
    job_id TEXT PRIMARY KEY, dealer TEXT NOT NULL, key_id BLOB NOT NULL, public_context BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS exchange_keys (
    job_id TEXT NOT NULL, participant_id TEXT NOT NULL, public_key BLOB NOT NULL, PRIMARY KEY (job_id, participant_id)
);
CREATE TABLE IF NOT EXISTS he_evaluation_keys (
    job_id TEXT PRIMARY KEY, keys BLOB NOT NULL, created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sealed_keys (
    job_id TEXT NOT NULL, recipient TEXT NOT NULL, sender TEXT NOT NULL, blob BLOB NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY (job_id, recipient)
);
CREATE TABLE IF NOT EXISTS privacy_accountants (
    job_id TEXT PRIMARY KEY, state TEXT NOT NULL, updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS record_privacy (
    job_id TEXT NOT NULL, participant_id TEXT NOT NULL, round INTEGER NOT NULL, epsilon REAL NOT NULL,
    delta REAL NOT NULL, declined INTEGER NOT NULL, reason TEXT NOT NULL, reported_at REAL NOT NULL,
    PRIMARY KEY (job_id, participant_id, round)
);
"""

#: Admin actions (``coordinator.audit``): who did what to which job, when, and how it ended.
V2 = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, identity TEXT NOT NULL, action TEXT NOT NULL,
    job_id TEXT NOT NULL, arguments TEXT NOT NULL, outcome TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_job ON audit (job_id, seq);
"""

#: A member's updates of a round, found by an index (``Store.received_digests``, asked on every upload): through
#: the primary key, whose attempt comes before the member, each lookup read every update of the round, N^2 a round.
V3 = """
CREATE INDEX IF NOT EXISTS updates_member ON updates (job_id, round, participant_id);
"""

#: Key attestations (``crypto.attest``): each member's signed word for its exchange key, the dealer's for the
#: key id and context, relayed as signed so members can check them.
V4 = """
CREATE TABLE IF NOT EXISTS key_attestations (
    job_id TEXT NOT NULL, participant_id TEXT NOT NULL, purpose TEXT NOT NULL, attestation BLOB NOT NULL,
    PRIMARY KEY (job_id, participant_id, purpose)
);
"""

#: (version, SQL) in order; a file at version ``v`` gets every script whose version is above ``v``.
MIGRATIONS: tuple[tuple[int, str], ...] = ((1, V1), (2, V2), (3, V3), (4, V4))
LATEST = MIGRATIONS[-1][0]


def version(db: sqlite3.Connection) -> int:
    """The schema version the file records (0: made before versioning, or empty)."""
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite3.Connection, path: str,
            migrations: tuple[tuple[int, str], ...] = MIGRATIONS) -> int:
    """Bring ``db`` (autocommit connection to ``path``) to the last of ``migrations``; returns the version it had."""
    found, latest = version(db), migrations[-1][0]
    if found > latest:
        raise SchemaTooNew(f"{path}: store schema version {found} is newer than this coordinator's {latest}; "
                           "run the fedprompt release that wrote it, or restore a backup")
    for number, script in migrations:
        if number > found:
            try:
                db.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
    return found
