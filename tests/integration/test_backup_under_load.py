"""A backup taken while the database is being written must restore through the tool: the
manifest's row counts describe exactly what the archive holds (pgbench writing throughout)."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest
import yaml

from activities.common import ConfigSource
from activities.postgres import libpq_env
from tests.conftest import running_worker
from tests.helpers import create_database, wait_for_phase
from workflows import BackupWorkflow, DatabaseRestoreWorkflow
from workflows.models import ApprovalInput, BackupInput, BackupManifest, RestoreInput, RestoreResult

pytestmark = pytest.mark.postgres
PGBENCH = "/usr/lib/postgresql/15/bin/pgbench"


def rows(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


@pytest.mark.parametrize("dump_format", ["custom", "directory"])
async def test_backup_under_write_load_restores_with_matching_counts(client, task_queue, postgres, tmp_path,
                                                                     monkeypatch, platform, dump_format):
    name, dsn = create_database(postgres, "busy")
    env = libpq_env(dsn)
    subprocess.run([PGBENCH, "-i", "-q", "-s", "1"], env=env, check=True, capture_output=True)
    monkeypatch.setenv("TEST_BUSY_DSN", dsn)
    path = tmp_path / "rollback.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "artifact_dir": str(tmp_path / "incidents"),
                                    "services": {"busy": {
        "app": {"provider": "docker", "docker": {"container": "unused"}},
        "health": {"url": f"{platform.url}/health", "consecutive_checks": 1, "interval_seconds": 0.1},
        "database": {"dsn_env": "TEST_BUSY_DSN", "backup_dir": str(tmp_path / "backups"),
                     "dump_format": dump_format, "dump_jobs": 2},
    }}}))
    config = ConfigSource(path)
    # Writers that commit thousands of rows a second into pgbench_history for the whole backup
    # and restore, so a count read outside pg_dump's snapshot cannot match the archive.
    load = subprocess.Popen([PGBENCH, "-n", "-c", "2", "-T", "600"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        await wait_until_rows_grow(dsn)
        async with running_worker(client, config, task_queue):
            manifest = await client.execute_workflow(
                BackupWorkflow.run, BackupInput(service="busy"), id=f"wf-{uuid.uuid4()}", task_queue=task_queue,
                result_type=BackupManifest)
            assert manifest.format == dump_format
            assert rows(dsn, "pgbench_history") > manifest.tables["public.pgbench_history"]  # written on since
            handle = await client.start_workflow(
                DatabaseRestoreWorkflow.run, RestoreInput(service="busy", source=manifest.backup_id),
                id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=RestoreResult)
            status = await wait_for_phase(handle, "awaiting_approval", timeout=120)  # the count check passed
            assert any(e.kind.value == "verified" and "match the backup's row counts" in e.message
                       for e in status.timeline)
            load.terminate()
            load.wait(timeout=30)
            await handle.execute_update(DatabaseRestoreWorkflow.approve, ApprovalInput(approver="dba", reason="drill"))
            result = await handle.result()
    finally:
        load.kill()
        load.wait()
    assert result.outcome == "restored"
    assert rows(dsn, "pgbench_history") == manifest.tables["public.pgbench_history"]
    assert rows(dsn, "pgbench_accounts") == manifest.tables["public.pgbench_accounts"] == 100_000
    assert Path(manifest.archive).exists()


async def wait_until_rows_grow(dsn: str) -> None:
    import asyncio

    for _ in range(100):
        if rows(dsn, "pgbench_history") > 500:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("pgbench did not start writing")
