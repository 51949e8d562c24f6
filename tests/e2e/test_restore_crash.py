"""The worker is SIGKILLed while pg_restore runs; a new worker redoes the restore and the run
ends with exactly one restored database swapped in, no half-restored stray and no orphan
pg_restore."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import uuid

import psycopg
import pytest

from tests.e2e.test_worker_crash import start_worker
from tests.helpers import assert_eventually, wait_for_phase
from tests.integration.test_restore import backup, count, databases, shop_db  # noqa: F401 - the fixture
from workflows import DatabaseRestoreWorkflow
from workflows.models import ApprovalInput, RestoreInput, RestoreResult

pytestmark = pytest.mark.postgres


def pg_restore_running() -> bool:
    return subprocess.run(["pgrep", "-x", "pg_restore"], capture_output=True).returncode == 0


async def test_sigkill_during_pg_restore(client, task_queue, temporal_address, shop_db, tmp_path):  # noqa: F811
    name, dsn, admin, config = shop_db
    with psycopg.connect(dsn) as conn:  # enough data that pg_restore runs for a few seconds
        conn.execute("CREATE TABLE events (id int PRIMARY KEY, payload text)")
        conn.execute("INSERT INTO events SELECT g, md5(g::text) || md5((g * 7)::text) FROM generate_series(1, 1500000) g")
        conn.execute("CREATE INDEX events_payload ON events (payload)")
    manifest = await backup(client, task_queue, config)
    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM events WHERE id > 1000")  # the damage

    log = tmp_path / "worker.log"
    worker = start_worker(str(config._path), temporal_address, task_queue, log, TEST_SHOP_DSN=dsn)
    try:
        handle = await client.start_workflow(
            DatabaseRestoreWorkflow.run, RestoreInput(service="shop", source=manifest.backup_id),
            id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=RestoreResult)

        async def restoring() -> bool:
            with psycopg.connect(admin) as conn:
                return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_restore' "
                                    "AND datname LIKE %s", (f"{name}_restore_%",)).fetchone()[0] > 0

        await assert_eventually(restoring, timeout=120, interval=0.05, message="pg_restore running")
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        await assert_eventually(lambda: asyncio.to_thread(lambda: not pg_restore_running()), timeout=10,
                                message="pg_restore died with the worker")
        assert len(databases(admin, f"{name}_restore_")) == 1  # the half-restored one, labelled as ours
        worker = start_worker(str(config._path), temporal_address, task_queue, log, TEST_SHOP_DSN=dsn)
        await wait_for_phase(handle, "awaiting_approval", timeout=180)
        await handle.execute_update(DatabaseRestoreWorkflow.approve, ApprovalInput(approver="dba", reason="go"))
        result = await asyncio.wait_for(handle.result(), timeout=120)
    finally:
        worker.kill()
        worker.wait(10)
    assert result.outcome == "restored", result.message
    assert count(dsn, "events") == 1500000
    assert databases(admin, f"{name}_restore_") == set()  # redone in place of the half one, then swapped in
    assert databases(admin, f"{name}_before_restore_") == {result.kept_old_as}
    history = [e async for e in handle.fetch_history_events()]
    attempts = [e.activity_task_started_event_attributes.attempt for e in history
                if e.HasField("activity_task_started_event_attributes")]
    assert max(attempts) >= 2
