"""The store's schema versions: a file from before versioning is migrated on open, one from a newer release is
refused by name, and the coordinator says so in one line."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fedprompt.coordinator.schema import LATEST, V1, migrate
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
    assert _user_version(path) == LATEST == 4


def test_a_new_file_starts_at_the_latest_version_and_reopening_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "fresh.sqlite"
    Store(path).close()
    assert _user_version(path) == LATEST
    store = Store(path)
    store.record_audit("admin:alice", "create", "job-2", '{"config_toml": "x"}', "ok")
    store.close()
    store = Store(path)
    try:
        assert [(a.identity, a.arguments) for a in store.audit()] == [("admin:alice", {"config_toml": "x"})]
    finally:
        store.close()
    assert _user_version(path) == LATEST


def test_a_migration_that_fails_leaves_the_file_at_the_last_whole_version(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.sqlite"
    _v1_file(path)
    broken = ((1, V1), (2, "CREATE TABLE half_done (x INTEGER);\nINSERT INTO no_such_table VALUES (1);"))
    db = sqlite3.connect(path, isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
            migrate(db, str(path), broken)
        assert not db.in_transaction
        assert db.execute("SELECT name FROM sqlite_master WHERE name='half_done'").fetchall() == []
        assert db.execute("SELECT job_id FROM jobs").fetchall() == [("job-1",)]
    finally:
        db.close()
    assert _user_version(path) == 1


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
