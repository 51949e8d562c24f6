"""The incident verbs of the `rollback` CLI, as a person runs them (subprocesses against the real
dev server; the worker's read-only app steps are stand-ins under the real names)."""

from __future__ import annotations

import asyncio
import uuid

from tests.conftest import running_worker
from tests.helpers import wait_for_phase
from tests.test_cli import assert_one_line_error, cli
from tests.workflows.test_incident_comms import stand_ins
from workflows.models import IncidentResult


async def test_declare_ack_status_list_resolve(client, task_queue, temporal_address, write_config, tmp_path):
    service = f"svc{uuid.uuid4().hex[:6]}"
    config = write_config({service: {"app": {"provider": "docker", "docker": {"container": "web"}},
                                     "health": {"url": "http://127.0.0.1:9/health"}}})
    env = {"ROLLBACK_CONFIG": str(tmp_path / "rollback.yaml")}

    async def run(*args: str):
        return await asyncio.to_thread(cli, *args, address=temporal_address, task_queue=task_queue, extra_env=env)

    async with running_worker(client, config, task_queue, replace=stand_ins()):
        dry = await run("incident", service, "--severity", "P2", "--reason", "admin 500s", "--dry-run", "--wait")
        assert dry.returncode == 0 and "DRY_RUN: dry run: plan only" in dry.stdout, dry

        started = await run("incident", service, "--severity", "p2", "--reason", "admin page 500s")
        assert started.returncode == 0 and f"started incident-{service}" in started.stdout, started
        handle = client.get_workflow_handle(f"incident-{service}")
        await wait_for_phase(handle, "mitigating", timeout=30)
        again = await run("incident", service, "--reason", "again")
        assert_one_line_error(again, 1, "already open")

        acked = await run("ack", f"incident-{service}", "--as", "alice")
        assert acked.returncode == 0 and "acknowledged by alice" in acked.stdout, acked
        assert_one_line_error(await run("ack", f"incident-{service}", "--as", "bob"), 1, "already acknowledged by alice")

        shown = await run("status", f"incident-{service}")
        assert f"P2 incident on {service}, phase mitigating" in shown.stdout and "acknowledged by: alice" in shown.stdout
        listed = await run("incidents", "list", "--open")
        assert f"incident-{service}" in listed.stdout and "P2" in listed.stdout, listed
        assessed = await run("assess", service)
        assert assessed.returncode == 0 and "running demo-web:v2" in assessed.stdout, assessed

        resolved = await run("resolve", f"incident-{service}", "--reason", "fixed forward", "--as", "alice")
        assert resolved.returncode == 0, resolved
        result = IncidentResult.model_validate(await handle.result())
    assert result.outcome == "resolved" and "fixed forward" in result.message
