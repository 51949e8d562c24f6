"""The schema check against a real PostgreSQL: a target that expects an older schema than the
live database is never rolled out blindly."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from tests.conftest import running_worker
from tests.helpers import create_database, git_service, sh
from workflows import AppRollbackWorkflow
from workflows.models import AppRollbackInput, AppRollbackResult


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


async def test_live_schema_ahead_of_target_stops_before_any_change(client, task_queue, repo, platform,
                                                                   write_config, app_database):
    remote, commits = repo
    config = write_config({"web": with_database(git_service(remote, platform))})
    plan = (await run(client, task_queue, config, target=commits["good"], dry_run=True)).plan
    assert plan.schema_check.migration_rollback_needed
    assert (plan.schema_check.live_schema_version, plan.schema_check.target_schema_version) == ("3", "2")
    assert plan.needs_approval and any("migration rollback" in step for step in plan.steps)

    result = await run(client, task_queue, config, target=commits["good"])
    assert result.outcome == "failed" and "roll the schema back to 2" in result.message
    assert sh("git", "--git-dir", str(remote), "rev-parse", "main") == commits["bad2"]  # nothing pushed
    assert platform.hooks == []


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
