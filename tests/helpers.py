"""Small helpers the tests share."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Awaitable, Callable

from temporalio.client import WorkflowExecutionStatus

from workflows.models import RollbackStatus


async def assert_eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20, interval: float = 0.2,
                            message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout}s")
        await asyncio.sleep(interval)


async def wait_for_phase(handle, phase: str, timeout: float = 20) -> RollbackStatus:
    state: dict = {}

    async def reached() -> bool:
        state["s"] = await handle.query("status", result_type=RollbackStatus)
        if state["s"].phase.value == phase:
            return True
        if (await handle.describe()).status != WorkflowExecutionStatus.RUNNING:  # it will never get there
            last = state["s"].timeline[-3:]
            raise AssertionError(f"the run ended in phase {state['s'].phase.value} before reaching {phase}: "
                                 + "; ".join(f"{e.kind.value}: {e.message}" for e in last))
        return False

    await assert_eventually(reached, timeout, message=f"phase {phase}")
    return state["s"]


def kinds(timeline) -> list[str]:
    return [event.kind.value for event in timeline]


def sh(*args: str, cwd=None) -> str:
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def git_service(remote, platform) -> dict:
    return {
        "app": {"provider": "git", "git": {"repo": str(remote), "branch": "main",
                                           "deploy_hook_url_env": "TEST_DEPLOY_HOOK", "schema_file": "SCHEMA_VERSION"}},
        "health": {"url": f"{platform.url}/health", "version_url": f"{platform.url}/version",
                   "consecutive_checks": 2, "interval_seconds": 0.2, "timeout_seconds": 1},
    }


def create_database(admin_dsn: str, prefix: str) -> tuple[str, str]:
    """A fresh database on the test cluster: its name and a DSN to it."""
    import uuid

    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return name, admin_dsn.rsplit("/", 1)[0] + f"/{name}"


def set_postgres_flag(dsn: str, name: str, value: str, table: str = "rollback_flags") -> None:
    """Put a kill switch in the PostgreSQL flag store the way an operator would, before a run."""
    import psycopg

    from activities.flags import _postgres_ddl
    from workflows.config import KillSwitch

    with psycopg.connect(dsn) as conn:
        conn.execute(_postgres_ddl(KillSwitch(name=name, store="postgres", table=table)))
        conn.execute(f"INSERT INTO {table} (name, value) VALUES (%s, %s)", (name, value))


async def assert_redeploy_waits_for_approval(client, task_queue: str, config, service: str, target: str,
                                             unchanged: Callable[[], None]) -> None:
    """Ask for a rollback to a version an earlier rollback moved away from: the plan must say it
    re-deploys a rolled-back version and wait for a person; nothing changes before the decision,
    and a rejection ends the run without acting."""
    import uuid

    from tests.conftest import running_worker
    from workflows import AppRollbackWorkflow
    from workflows.models import AppRollbackInput, AppRollbackResult, ApprovalInput

    async with running_worker(client, config, task_queue):
        handle = await client.start_workflow(
            AppRollbackWorkflow.run, AppRollbackInput(service=service, target=target, reason="put it back anyway"),
            id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=AppRollbackResult)
        status = await wait_for_phase(handle, "awaiting_approval", timeout=60)
        asked = [e.message for e in status.timeline if e.kind.value == "approval_requested"]
        assert asked and "re-deploys a version once rolled back" in asked[-1], asked
        unchanged()
        await handle.execute_update(AppRollbackWorkflow.reject, ApprovalInput(approver="lead", reason="no"))
        result = await handle.result()
    assert result.outcome == "rejected"
    unchanged()


async def roll_back_twice(client, task_queue: str, config, service: str):
    """The same default `rollback app SERVICE` twice in a row: the first result, and why the
    second was refused (it must never redeploy what the first rolled back from)."""
    import uuid

    from temporalio.client import WorkflowFailureError

    from tests.conftest import running_worker
    from workflows import AppRollbackWorkflow
    from workflows.models import AppRollbackInput, AppRollbackResult

    async with running_worker(client, config, task_queue):
        first = await client.execute_workflow(
            AppRollbackWorkflow.run, AppRollbackInput(service=service), id=f"wf-{uuid.uuid4()}",
            task_queue=task_queue, result_type=AppRollbackResult)
        assert first.outcome == "rolled_back", first.message
        try:
            second = await client.execute_workflow(
                AppRollbackWorkflow.run, AppRollbackInput(service=service), id=f"wf-{uuid.uuid4()}",
                task_queue=task_queue, result_type=AppRollbackResult)
        except WorkflowFailureError as failure:
            return first, str(failure.cause.cause)
    raise AssertionError(f"the second rollback ran: {second.outcome} to {second.to_version}")


def shop_service(platform, backup_dir, **extra) -> dict:
    """The database service the restore tests use: its DSN in TEST_SHOP_DSN, maintenance mode as
    a PostgreSQL kill switch, the app's health on the `platform` fake."""
    return {
        "app": {"provider": "docker", "docker": {"container": "unused"}},
        "health": {"url": f"{platform.url}/health", "consecutive_checks": 1, "interval_seconds": 0.1},
        "kill_switches": [{"name": "MAINTENANCE_MODE", "store": "postgres", "off_value": "on"}],
        "database": {"dsn_env": "TEST_SHOP_DSN", "backup_dir": str(backup_dir)},
        **extra,
    }


def history_text(history) -> str:
    """A fetched workflow history as searchable text: its JSON with every payload decoded (the
    JSON carries payloads base64-encoded, so a plain search of it finds no value at all)."""
    import base64
    import binascii
    import json

    found: list[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str):
            found.append(node)
            try:
                found.append(base64.b64decode(node, validate=True).decode("utf-8", "replace"))
            except (binascii.Error, ValueError):
                pass

    walk(json.loads(history.to_json()))
    return "\n".join(found)


def assert_keys_only_in_the_store(values: list[str], histories: list[str], result, slack, records, root: Path,
                                  skip=lambda path: False) -> None:
    """The key-rotation canary: no key value in any decoded history, the result, a Slack message,
    a log record or a file under `root`, except the protected store (and there 0600); and the
    store does hold them (they are the way back)."""
    import json
    import stat

    for value in values:
        for text in histories:
            assert value not in text
        assert value not in result.model_dump_json()
        assert value not in json.dumps(slack.messages)
        for record in records:
            assert value not in record.getMessage()
    stored = []
    for path in Path(root).rglob("*"):
        if path.is_file() and not skip(path):
            content = path.read_bytes()
            if any(v.encode() in content for v in values):
                stored.append(path)
                assert "/state/env/shop/" in str(path), f"{path} holds a key outside the protected store"
                assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stored
