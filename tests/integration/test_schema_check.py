"""The schema check against a real PostgreSQL: a target that expects an older schema than the
live database is never rolled out blindly."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from tests.conftest import running_worker
from activities.migrations import apply_up
from tests.helpers import create_database, git_service, sh, wait_for_phase
from tests.migration_sets import columns, tables, tracking, write_migrations
from workflows import AppRollbackWorkflow
from workflows.models import AppRollbackInput, AppRollbackResult, ApprovalInput


@pytest.fixture
def app_database(postgres, monkeypatch):
    """A database whose golang-migrate tracking table says version 3."""
    _, dsn = create_database(postgres, "app")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_migrations (version bigint PRIMARY KEY, dirty boolean NOT NULL)")
        conn.execute("INSERT INTO schema_migrations VALUES (3, false)")
    monkeypatch.setenv("TEST_APP_DSN", dsn)
    return dsn


def with_database(service: dict) -> dict:
    return {**service, "database": {"dsn_env": "TEST_APP_DSN", "migration_tool": "golang-migrate"}}


async def run(client, task_queue, config, **request) -> AppRollbackResult:
    async with running_worker(client, config, task_queue):
        return await client.execute_workflow(
            AppRollbackWorkflow.run, AppRollbackInput(service="web", **request),
            id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=AppRollbackResult,
        )


async def test_live_schema_ahead_of_target_changes_nothing_before_the_approval(
        client, task_queue, repo, platform, write_config, app_database):
    remote, commits = repo
    config = write_config({"web": with_database(git_service(remote, platform))})
    plan = (await run(client, task_queue, config, target=commits["good"], dry_run=True)).plan
    assert plan.schema_check.migration_rollback_needed
    assert (plan.schema_check.live_schema_version, plan.schema_check.target_schema_version) == ("3", "2")
    assert plan.needs_approval and any("migration rollback" in step for step in plan.steps)

    async with running_worker(client, config, task_queue):
        handle = await client.start_workflow(
            AppRollbackWorkflow.run, AppRollbackInput(service="web", target=commits["good"]),
            id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=AppRollbackResult)
        await wait_for_phase(handle, "awaiting_approval", timeout=60)
        await handle.execute_update(AppRollbackWorkflow.reject, ApprovalInput(approver="oncall", reason="not now"))
        result = await handle.result()
    assert result.outcome == "rejected"
    assert sh("git", "--git-dir", str(remote), "rev-parse", "main") == commits["bad2"]  # nothing pushed
    assert platform.hooks == []
    with psycopg.connect(app_database) as conn:
        assert conn.execute("SELECT version FROM schema_migrations").fetchone()[0] == 3


async def test_live_schema_ahead_is_rolled_back_first_then_the_app(client, task_queue, repo, platform, write_config,
                                                                   postgres, monkeypatch, tmp_path):
    """Runbook 001's "app + schema": the target expects schema 2, the database is at 3. After one
    approval (nothing changes before it), a MigrationRollbackWorkflow child runs the real down
    script of 3, then the app is rolled back; the database really has schema 2."""
    _, dsn = create_database(postgres, "app")
    directory = tmp_path / "migrations"
    write_migrations("golang-migrate", directory)
    assert apply_up(dsn, "golang-migrate", directory) == ["1", "2", "3"]
    monkeypatch.setenv("TEST_APP_DSN", dsn)
    remote, commits = repo
    config = write_config({"web": {**git_service(remote, platform), "database": {
        "dsn_env": "TEST_APP_DSN", "migration_tool": "golang-migrate", "migrations_dir": str(directory),
        "backup_dir": str(tmp_path / "backups")}}})
    async with running_worker(client, config, task_queue):
        handle = await client.start_workflow(
            AppRollbackWorkflow.run, AppRollbackInput(service="web", target=commits["good"], reason="bad release"),
            id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=AppRollbackResult)
        state = await wait_for_phase(handle, "awaiting_approval", timeout=60)
        assert "migration rollback to 2" in state.waiting_for_approval or any(
            "migration rollback" in e.message for e in state.timeline)
        assert "score" in columns(dsn, "accounts") and platform.hooks == []  # nothing changed before the approval
        await handle.execute_update(AppRollbackWorkflow.approve, ApprovalInput(approver="oncall", reason="checked"))
        result = await handle.result()
    assert result.outcome == "rolled_back", result.message
    assert columns(dsn, "accounts") == ["id", "email", "plan"]  # 3's down script ran: schema 2
    assert "audit" not in tables(dsn) and tracking(dsn, "golang-migrate") == [(2, False)]
    assert len(platform.hooks) == 1  # then the app: one deploy of the revert
    assert sh("git", "--git-dir", str(remote), "rev-parse", "main") != commits["bad2"]
    child = next(e for e in result.timeline if "MigrationRollbackWorkflow" in e.message)
    assert child.data["child"].startswith(handle.id + "-schema-")


async def test_compatible_schema_proceeds(client, task_queue, repo, platform, write_config,
                                          app_database):
    remote, commits = repo
    with psycopg.connect(app_database, autocommit=True) as conn:
        conn.execute("UPDATE schema_migrations SET version = 2")
    config = write_config({"web": with_database(git_service(remote, platform))})
    result = await run(client, task_queue, config, target=commits["good"])
    assert result.outcome == "rolled_back"
    assert result.plan.schema_check.checked and not result.plan.schema_check.migration_rollback_needed


async def test_unreachable_database_says_the_check_could_not_be_made(client, task_queue, repo, platform,
                                                                     write_config, monkeypatch):
    remote, commits = repo
    monkeypatch.setenv("TEST_APP_DSN", "postgresql://postgres@127.0.0.1:1/none")
    config = write_config({"web": with_database(git_service(remote, platform))})
    plan = (await run(client, task_queue, config, target=commits["good"], dry_run=True)).plan
    assert not plan.schema_check.checked
    assert "live version is unknown (database unreachable" in plan.schema_check.message
    assert "127.0.0.1:1" not in plan.schema_check.message  # the DSN never reaches history
