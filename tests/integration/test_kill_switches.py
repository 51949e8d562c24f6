"""Kill switches never stay off silently: whatever fails or is cancelled after processing was
stopped, the run ends with the switches back at their recorded values (when the live database is
still untouched) or with an escalation that names them (when it is not)."""

from __future__ import annotations

import uuid

import pytest
from temporalio import activity
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError

from tests.conftest import running_worker
from tests.helpers import kinds, wait_for_phase
from tests.integration.test_migrations import APPROVAL, flag, migrated, start  # noqa: F401 - fixture
from tests.integration.test_restore import backup, shop_db  # noqa: F401 - fixture
from tests.integration.test_restore import flag as maintenance
from workflows import DatabaseRestoreWorkflow
from workflows.models import ApprovalInput, RestoreInput, RestoreResult, RollbackStatus

pytestmark = pytest.mark.postgres


def failing(name: str):
    """A stand-in registered under a real activity's name that fails for good."""

    @activity.defn(name=name)
    async def injected(request) -> None:
        raise ApplicationError(f"injected failure in {name}", non_retryable=True)

    return injected


def escalation(timeline) -> str:
    found = [e.message for e in timeline if e.kind.value == "escalated"]
    assert found, kinds(timeline)
    return found[-1]


async def test_migration_cancelled_during_approval_puts_the_switches_back(client, task_queue, migrated):
    dsn, versions, config = migrated("golang-migrate", policy="always")
    async with running_worker(client, config, task_queue):
        handle = await start(client, task_queue, versions[0])
        await wait_for_phase(handle, "awaiting_approval", timeout=60)
        assert flag(dsn, "PROCESSING_ENABLED") == "false"  # stopped before the approval
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        status = await handle.query("status", result_type=RollbackStatus)
    assert flag(dsn, "PROCESSING_ENABLED") == "true"
    assert "processing started again" in " ".join(e.message for e in status.timeline)
    assert kinds(status.timeline)[-1] == "cancelled"


@pytest.mark.parametrize("step, changed", [
    ("postgres.table_counts", False),  # before any down step: nothing changed, switches go back
    ("migrations.verify", True),       # after the down steps: escalated, switches stay off
    ("migrations.mark_stable", True),  # after the schema changed: escalated, switches stay off
])
async def test_migration_failing_after_processing_stopped(client, task_queue, migrated, step, changed):
    dsn, versions, config = migrated("golang-migrate", policy="always")
    async with running_worker(client, config, task_queue, replace=[failing(step)]):
        handle = await start(client, task_queue, versions[0])
        await wait_for_phase(handle, "awaiting_approval", timeout=60)
        await handle.execute_update("approve", APPROVAL)
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        status = await handle.query("status", result_type=RollbackStatus)
    if changed:
        assert flag(dsn, "PROCESSING_ENABLED") == "false"  # not silently back on a half-checked schema
        assert "PROCESSING_ENABLED" in escalation(status.timeline)
    else:
        assert flag(dsn, "PROCESSING_ENABLED") == "true"
        assert "escalated" not in kinds(status.timeline)
    assert kinds(status.timeline)[-1] in ("failed", "escalated")


@pytest.mark.parametrize("step, changed", [
    ("postgres.swap", False),          # the swap failed: the original database still serves
    ("health.verify", True),           # after the swap, the app check itself cannot run: escalated
    # (the counts after the swap are the restored database's own, read before it; a failure in a
    # re-import after the swap is tests/e2e/test_crash_matrix.py::test_reimport_is_never_run_twice)
])
async def test_restore_failing_after_processing_stopped(client, task_queue, shop_db, step, changed):
    name, dsn, admin, config = shop_db
    manifest = await backup(client, task_queue, config)
    async with running_worker(client, config, task_queue):
        handle = await client.start_workflow(
            DatabaseRestoreWorkflow.run, RestoreInput(service="shop", source=manifest.backup_id),
            id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=RestoreResult)
        await wait_for_phase(handle, "awaiting_approval", timeout=60)
    # the step fails from here on (the same activity may have run fine before the approval)
    async with running_worker(client, config, task_queue, replace=[failing(step)]):
        await handle.execute_update("approve", ApprovalInput(approver="dba", reason="restore"))
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        status = await handle.query("status", result_type=RollbackStatus)
    if changed:
        assert maintenance(dsn) == "on"  # maintenance mode stays on: the database was swapped
        assert "MAINTENANCE_MODE" in escalation(status.timeline)
    else:
        assert maintenance(dsn) == "off"  # back to its recorded value
        assert "escalated" not in kinds(status.timeline)
