"""The store's schema versions: a file from before versioning is migrated on open, one from a newer release is
refused by name, and the coordinator says so in one line; on a SQLite file and on a PostgreSQL database
(``store_location``), whose version is the one row of ``schema_version``."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fedprompt.coordinator.schema import LATEST, MIGRATIONS, V1, Migration, migrate
from fedprompt.coordinator.sqlbackend import connect
from fedprompt.coordinator.store import Store
from fedprompt.errors import SchemaTooNew
from tests.support import refused_in_one_line, run_fedprompt


def _v1_file(path: Path) -> None:
    """A state file as coordinators wrote it before versioning: today's tables, one job, user_version 0."""
    db = sqlite3.connect(path)
    db.executescript(V1)
    db.execute("INSERT INTO jobs VALUES ('job-1', 'rt', 'x = 1', 'paused', 'why', 64, 1.5)")
    db.commit()
    db.close()


def _user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


def _version(location: str) -> int:
    """The schema version a database records, read by the backend that opens it (without migrating)."""
    backend = connect(location)
    try:
        return backend.schema_version()
    finally:
        backend.close()


def test_a_file_from_before_versioning_is_migrated_with_its_data_intact(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.sqlite"
    _v1_file(path)
    assert _user_version(path) == 0
    store = Store(path)
    try:
        [job] = store.jobs()
        assert (job.job_id, job.name, job.config_toml, job.state, job.reason, job.vector_size) == (
            "job-1", "rt", "x = 1", "paused", "why", 64)
        assert store.audit() == []
        store.record_audit("admin:alice", "start", "job-1", "{}", "ok")
        assert [a.action for a in store.audit("job-1")] == ["start"]
    finally:
        store.close()
    assert _user_version(path) == LATEST == 7


def test_exchange_keys_written_before_version_3_keep_their_registration_order(tmp_path: Path) -> None:
    """Version 3 numbers the exchange keys a file already holds in the order SQLite kept them (``rowid``)."""
    path = tmp_path / "coordinator.sqlite"
    db = sqlite3.connect(path)
    db.executescript(V1)
    db.executemany("INSERT INTO exchange_keys VALUES ('job-1', ?, ?)", [("zed", b"z" * 32), ("amy", b"a" * 32)])
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    store = Store(path)
    try:
        assert list(store.exchange_keys("job-1")) == ["zed", "amy"]
        store.save_exchange_key("job-1", "bob", b"b" * 32)
        store.save_exchange_key("job-1", "zed", b"y" * 32)  # registering again keeps its place, takes the new key
        assert store.exchange_keys("job-1") == {"zed": b"y" * 32, "amy": b"a" * 32, "bob": b"b" * 32}
    finally:
        store.close()


def test_a_new_database_starts_at_the_latest_version_and_reopening_changes_nothing(store_location: str) -> None:
    Store(store_location).close()
    assert _version(store_location) == LATEST
    store = Store(store_location)
    store.record_audit("admin:alice", "create", "job-2", '{"config_toml": "x"}', "ok")
    store.save_exchange_key("job-2", "zed", b"z" * 32)
    store.save_exchange_key("job-2", "amy", b"a" * 32)
    store.close()
    store = Store(store_location)
    try:
        assert [(a.identity, a.arguments) for a in store.audit()] == [("admin:alice", {"config_toml": "x"})]
        assert list(store.exchange_keys("job-2")) == ["zed", "amy"]
    finally:
        store.close()
    assert _version(store_location) == LATEST


def test_a_migration_that_fails_leaves_the_database_at_the_last_whole_version(store_location: str) -> None:
    backend = connect(store_location)
    try:
        migrate(backend, MIGRATIONS[:1])
        with backend.transaction() as tx:
            tx.execute("INSERT INTO jobs VALUES ('job-1', 'rt', 'x = 1', 'paused', 'why', 64, 1.5)")
        broken = (*MIGRATIONS[:1], Migration(2, "CREATE TABLE half_done (x INTEGER);\nINSERT INTO no_such_table VALUES (1);"))
        with pytest.raises(Exception, match="no_such_table"):
            migrate(backend, broken)
        assert not backend.has_table("half_done")
        with backend.transaction() as tx:  # the connection is usable: no transaction was left open
            tx.execute("UPDATE jobs SET reason = 'still here' WHERE job_id = 'job-1'")
        assert backend.rows("SELECT job_id, reason FROM jobs") == [("job-1", "still here")]
        assert backend.schema_version() == 1
    finally:
        backend.close()


def test_a_postgresql_database_from_a_newer_release_is_refused_naming_it_and_both_versions(postgres_url: str) -> None:
    Store(postgres_url).close()
    backend = connect(postgres_url)
    try:
        with backend.transaction() as tx:
            tx.execute("UPDATE schema_version SET version = ?", (LATEST + 1,))
    finally:
        backend.close()
    with pytest.raises(SchemaTooNew) as refused:
        Store(postgres_url)
    assert postgres_url.rsplit("/", 1)[1] in str(refused.value)
    assert f"version {LATEST + 1}" in str(refused.value) and f"coordinator's {LATEST}" in str(refused.value)
    assert _version(postgres_url) == LATEST + 1


def test_a_file_from_a_newer_release_is_refused_naming_the_file_and_both_versions(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.sqlite"
    _v1_file(path)
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {LATEST + 1}")
    db.close()
    with pytest.raises(SchemaTooNew) as refused:
        Store(path)
    assert str(path) in str(refused.value)
    assert f"version {LATEST + 1}" in str(refused.value) and f"coordinator's {LATEST}" in str(refused.value)
    assert _user_version(path) == LATEST + 1  # left as it was


def test_the_coordinator_refuses_a_newer_file_in_one_line(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    _v1_file(state / "coordinator.sqlite")
    db = sqlite3.connect(state / "coordinator.sqlite")
    db.execute(f"PRAGMA user_version = {LATEST + 1}")
    db.close()
    result = run_fedprompt(["coordinator", "serve", "--insecure", "--listen", "127.0.0.1:0", "--state-dir", str(state)])
    assert result.returncode == 2
    assert "newer than this coordinator" in refused_in_one_line(result, "coordinator.sqlite")


def test_a_members_updates_of_a_round_are_found_by_index_not_by_reading_the_round(tmp_path: Path) -> None:
    # Asked on every upload (``Store.received_digests``): a scan of the round's updates made a round N^2.
    path = tmp_path / "coordinator.sqlite"
    Store(path).close()
    db = sqlite3.connect(path)
    try:
        plan = db.execute("EXPLAIN QUERY PLAN SELECT attempt, sha256 FROM updates WHERE job_id=? AND round=? AND "
                          "participant_id=?", ("job-1", 1, "a")).fetchall()
    finally:
        db.close()
    assert "USING INDEX updates_member (job_id=? AND round=? AND participant_id=?)" in str(plan)
