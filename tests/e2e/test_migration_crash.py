"""The worker is SIGKILLed while it takes the emergency backup of a migration rollback; a new
worker finishes the rollback with exactly one backup archive, verified."""

from __future__ import annotations

import asyncio
import signal
import uuid

import psycopg
import pytest

from activities.backups import sha256_of
from tests.e2e.test_worker_crash import start_worker
from tests.helpers import assert_eventually
from tests.integration.test_migrations import migrated  # noqa: F401 - the fixture
from tests.migration_sets import tracking
from workflows import MigrationRollbackWorkflow
from workflows.models import MigrationRollbackInput, MigrationRollbackResult

pytestmark = pytest.mark.postgres


async def test_sigkill_during_emergency_backup(client, task_queue, temporal_address, migrated, tmp_path):  # noqa: F811
    dsn, versions, config = migrated("golang-migrate")
    log = tmp_path / "worker.log"
    # another session holds a lock on a table only the backup reads, so the backup waits mid-way
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE ledger (id int PRIMARY KEY)")
    blocker = psycopg.connect(dsn)
    blocker.execute("LOCK TABLE ledger IN ACCESS EXCLUSIVE MODE")
    worker = start_worker(str(config._path), temporal_address, task_queue, log, TEST_MIG_DSN=dsn)
    try:
        handle = await client.start_workflow(
            MigrationRollbackWorkflow.run, MigrationRollbackInput(service="billing", target="-1"),
            id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=MigrationRollbackResult)

        async def backup_waiting() -> bool:
            with psycopg.connect(dsn) as conn:
                return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                    "AND wait_event_type = 'Lock'").fetchone()[0] > 0

        await assert_eventually(backup_waiting, timeout=60, message="backup waiting on the lock")
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        blocker.rollback()  # the dead worker's half-done backup may now finish; it must not count
        worker = start_worker(str(config._path), temporal_address, task_queue, log, TEST_MIG_DSN=dsn)
        result = await asyncio.wait_for(handle.result(), timeout=120)
    finally:
        blocker.close()
        worker.kill()
        worker.wait(10)
    assert result.outcome == "rolled_back", result.message
    backups = tmp_path / "backups"
    archives = sorted(p.name for p in backups.iterdir() if not p.name.endswith(".manifest.json"))
    assert archives == [f"{result.emergency_backup.backup_id}.dump"]  # one archive, no partial left behind
    assert result.emergency_backup.verified
    assert sha256_of(backups / archives[0]) == result.emergency_backup.sha256
    assert tracking(dsn, "golang-migrate") == [(2, False)]
    child = client.get_workflow_handle(f"{handle.id}-emergency-backup")
    history = [e async for e in child.fetch_history_events()]
    attempts = [e.activity_task_started_event_attributes.attempt for e in history
                if e.HasField("activity_task_started_event_attributes")]
    assert max(attempts) >= 2  # the dump really was retried on the new worker
