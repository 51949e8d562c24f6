"""Supabase point-in-time restore behind the same input (`source: pitr`), against a contract
server of its Management API; the database is a real PostgreSQL the fake "restores"."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from temporalio.client import WorkflowFailureError

from tests.conftest import running_worker
from tests.contract.server import serve
from tests.contract.supabase import FakeSupabase
from tests.helpers import create_database, set_postgres_flag, wait_for_phase
from workflows import DatabaseRestoreWorkflow
from workflows.models import ApprovalInput, RestoreInput, RestoreResult

pytestmark = pytest.mark.postgres


@pytest.fixture
def supabase_shop(postgres, write_config, monkeypatch, tmp_path, platform):
    _, dsn = create_database(postgres, "supa")
    with psycopg.connect(dsn) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now())")
        conn.execute("INSERT INTO orders (id, created_at) SELECT g, now() - interval '1 hour' "
                     "FROM generate_series(1, 10) g")
    set_postgres_flag(dsn, "PROCESSING_ENABLED", "true")
    fake = FakeSupabase(earliest=int(time.time()) - 86400, restore_seconds=1.0)

    def restore_in_place(target_unix: int) -> None:  # what Supabase does to the real database
        with psycopg.connect(dsn) as conn:
            conn.execute("DELETE FROM orders WHERE created_at > to_timestamp(%s)", (target_unix,))

    fake.on_restore = restore_in_place
    server = serve(fake.app())
    monkeypatch.setenv("TEST_SUPA_DSN", dsn)
    monkeypatch.setenv("TEST_SUPABASE_TOKEN", fake.token)
    config = write_config({"shop": {
        "app": {"provider": "docker", "docker": {"container": "unused"}},
        "health": {"url": f"{platform.url}/health", "consecutive_checks": 1, "interval_seconds": 0.1},
        "database": {"dsn_env": "TEST_SUPA_DSN", "backup_dir": str(tmp_path / "backups"),
                     "pitr": {"supabase": {"project_ref": fake.ref, "token_env": "TEST_SUPABASE_TOKEN",
                                           "api_url": server.url, "poll_interval_seconds": 0.2}}},
        "kill_switches": [{"name": "PROCESSING_ENABLED", "store": "postgres"}],
    }})
    yield dsn, fake, config
    server.stop()


def ids(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM orders ORDER BY id")]


def flag(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT value FROM rollback_flags WHERE name = 'PROCESSING_ENABLED'").fetchone()[0]


async def test_supabase_pitr_after_safety_backup_and_approval(client, task_queue, supabase_shop):
    dsn, fake, config = supabase_shop
    target = datetime.now(timezone.utc) - timedelta(minutes=1)
    with psycopg.connect(dsn) as conn:  # written after the target: the restore drops them
        conn.execute("INSERT INTO orders (id) SELECT generate_series(11, 13)")
    async with running_worker(client, config, task_queue):
        handle = await client.start_workflow(
            DatabaseRestoreWorkflow.run, RestoreInput(service="shop", source="pitr", target_time=target),
            id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=RestoreResult)
        state = await wait_for_phase(handle, "awaiting_approval", timeout=60)
        assert "rows newer than that (exported): {'public.orders': 3}" in state.timeline[-1].message
        assert fake.restores == [] and flag(dsn) == "true"  # nothing before the approval
        await handle.execute_update("approve", ApprovalInput(approver="dba", reason="undo the bad import"))
        result = await handle.result()
    assert result.outcome == "restored", result.message
    assert [r["recovery_time_target_unix"] for r in fake.restores] == [int(target.timestamp())]  # once
    assert ids(dsn) == list(range(1, 11))
    assert result.safety_backup.verified and result.safety_backup.tables["public.orders"] == 13
    assert result.safety_backup.created_at.timestamp() < fake.restores[0]["at"]  # backup first
    exported = (Path(result.artifact_dir) / "recent-rows" / "public.orders.csv").read_text().splitlines()
    assert len(exported) == 4  # header + the three rows the restore dropped
    assert flag(dsn) == "true" and result.kill_switches_restored


async def test_target_outside_the_window_changes_nothing(client, task_queue, supabase_shop):
    dsn, fake, config = supabase_shop
    async with running_worker(client, config, task_queue):
        with pytest.raises(WorkflowFailureError) as failure:
            await client.execute_workflow(
                DatabaseRestoreWorkflow.run, RestoreInput(service="shop", source="pitr",
                                                          target_time=datetime(2020, 1, 1, tzinfo=timezone.utc)),
                id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=RestoreResult)
    assert "cannot be restored to 2020-01-01" in str(failure.value.cause) and "nothing was changed" in str(
        failure.value.cause)
    assert fake.restores == [] and ids(dsn) == list(range(1, 11))
    assert not list(Path(config.service("shop").database.backup_dir).glob("*.dump"))  # no safety backup either
