"""The coordinator store's schema as ordered migrations, and the code that brings a database up to date.

One list serves both databases (``coordinator.sqlbackend``): the scripts are written for SQLite and the
PostgreSQL backend translates their column types.  A SQLite file records its schema version in
``PRAGMA user_version``, a PostgreSQL database in the one-row table ``schema_version``.  Opening one applies,
in order, each migration above that version, each in its own transaction together with the version bump, so a
crash mid-upgrade leaves the database at the last complete version.  Files written before versioning existed
have version 0 and version 1's tables; version 1 only creates missing tables, so it serves them and a new empty
database alike.  A database from a newer coordinator is refused rather than written by code that does not know
its tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedprompt.errors import SchemaTooNew

if TYPE_CHECKING:
    from fedprompt.coordinator.sqlbackend import Backend

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

#: Exchange keys in the order they were first registered (the first is the default key dealer), as a column
#: both databases have: SQLite's ``rowid`` order moved a member that registered again to the end.
V5 = """
ALTER TABLE exchange_keys ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
"""

#: Which of several coordinator replicas sharing one database is active (``coordinator.lease``): one row, the
#: holder, its fencing token (raised by one at every takeover) and when the lease lapses, in the database's clock.
V6 = """
CREATE TABLE IF NOT EXISTS coordinator_lease (
    id INTEGER PRIMARY KEY CHECK (id = 1), holder TEXT NOT NULL, token INTEGER NOT NULL, expires_at REAL NOT NULL
);
INSERT INTO coordinator_lease VALUES (1, '', 0, 0) ON CONFLICT DO NOTHING;
"""

#: A threshold job's relayed key material (``coordinator.threshold``): each member's public key share ("share")
#: and each sub-share sealed from a dealer to one recipient ("dealt"), so a restarted coordinator relays them again.
V7 = """
CREATE TABLE IF NOT EXISTS threshold_relay (
    job_id TEXT NOT NULL, kind TEXT NOT NULL, owner TEXT NOT NULL, recipient TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (job_id, kind, owner, recipient)
);
"""


@dataclass(frozen=True)
class Migration:
    """One schema version: its script, and what only a SQLite file needs (rows written before the migration,
    rewritten with SQLite's own columns).  A PostgreSQL database never holds such rows: the first release that
    writes one is at version 5, so its migrations run on empty tables."""

    number: int
    script: str
    sqlite_only: str = ""


#: In order; a database at version ``v`` gets every migration whose number is above ``v``.
MIGRATIONS: tuple[Migration, ...] = (Migration(1, V1), Migration(2, V2),
                                     Migration(3, V3), Migration(4, V4),
                                     Migration(5, V5, "UPDATE exchange_keys SET seq = rowid;"), Migration(6, V6),
                                     Migration(7, V7))
LATEST = MIGRATIONS[-1].number


def migrate(backend: Backend, migrations: tuple[Migration, ...] = MIGRATIONS) -> int:
    """Bring ``backend``'s database to the last of ``migrations``; returns the version it had."""
    found, latest = backend.schema_version(), migrations[-1].number
    if found > latest:
        raise SchemaTooNew(f"{backend.location}: store schema version {found} is newer than this coordinator's "
                           f"{latest}; run the fedprompt release that wrote it, or restore a backup")
    for migration in migrations:
        if migration.number > found:
            backend.apply(migration)
    return found
