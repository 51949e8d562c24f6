"""Many workers, one truth: three `rollback worker` processes on one task queue share the
PostgreSQL state store; 20 app rollbacks of different Vercel services run at once and one worker
is SIGKILLed in the middle. Every side effect happens exactly once (one Vercel rollback per
project, each Slack message once, one Statuspage incident per service), all 20 finish, and no
ledger file is written under state_dir.

The dead worker's in-flight activity attempts are failed by ID (what Temporal does by itself once
their timeouts pass: up to 30 s for a notification), so the test does not wait for them.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import yaml
from temporalio.client import WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from tests.contract.vercel import FakeVercel
from tests.helpers import assert_eventually, create_database
from workflows import AppRollbackWorkflow
from workflows.models import AppRollbackInput, AppRollbackResult

ROOT = Path(__file__).resolve().parents[2]
SERVICES = [f"svc{i:02d}" for i in range(20)]


def services_config(vercel: FakeVercel, slack_url: str, statuspage) -> dict:
    services = {}
    for index, name in enumerate(SERVICES):
        vercel.add_project(f"prj_{name}", name)
        vercel.add_deployment(f"prj_{name}", f"dpl_{name}_good", 1_000 + index)
        vercel.add_deployment(f"prj_{name}", f"dpl_{name}_bad", 2_000 + index, meta={"health": "degraded"})
        services[name] = {
            "app": {"provider": "vercel", "vercel": {"project": f"prj_{name}", "token_env": "TEST_VERCEL_TOKEN",
                                                     "api_url": vercel.url, "poll_interval_seconds": 0.2}},
            "health": {"url": f"{vercel.url}/_site/prj_{name}/health",
                       "version_url": f"{vercel.url}/_site/prj_{name}/version",
                       "consecutive_checks": 2, "interval_seconds": 0.2, "timeout_seconds": 2},
            "notify": {"slack_webhook_env": "TEST_SLACK_WEBHOOK",
                       "statuspage": {"page_id": statuspage.page_id, "api_key_env": "TEST_STATUSPAGE_KEY",
                                      "api_url": statuspage.url}},
        }
    return services


async def running_attempts(handles) -> collections.Counter:
    """How many activity attempts each worker identity is running now."""
    running: collections.Counter = collections.Counter()
    for handle in handles:
        for pending in (await handle.describe()).raw_description.pending_activities:
            if pending.last_worker_identity:
                running[pending.last_worker_identity] += 1
    return running


async def fail_attempts_of(client, handles, pid: int) -> int:
    """Fail every activity attempt still running on the dead worker (identity `pid@host`)."""
    identity, failed = f"{pid}@{socket.gethostname()}", 0
    for handle in handles:
        described = await handle.describe()
        for pending in described.raw_description.pending_activities:
            if pending.last_worker_identity != identity:
                continue
            dead = client.get_async_activity_handle(workflow_id=handle.id, run_id=described.run_id,
                                                    activity_id=pending.activity_id)
            try:
                await dead.fail(ApplicationError("worker killed (many-workers test)", type="WorkerKilled"))
                failed += 1
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
    return failed


async def test_three_workers_twenty_rollbacks_one_killed_every_side_effect_once(
        client, temporal_address, task_queue, postgres, vercel, slack, statuspage, tmp_path, monkeypatch):
    _, state_dsn = create_database(postgres, "rollback_state")
    vercel.job_seconds = 1.0  # rollbacks stay in flight long enough for the kill to land mid-way
    state_dir = tmp_path / "state"
    config_file = tmp_path / "rollback.yaml"
    config_file.write_text(yaml.safe_dump({
        "state_dir": str(state_dir), "artifact_dir": str(tmp_path / "incidents"),
        "audit_log": str(tmp_path / "audit.jsonl"), "state_dsn_env": "TEST_STATE_DSN",
        "services": services_config(vercel, slack.url, statuspage)}))
    env = {**os.environ, "TEMPORAL_ADDRESS": temporal_address, "TEMPORAL_TASK_QUEUE": task_queue,
           "TEST_STATE_DSN": state_dsn, "TEST_VERCEL_TOKEN": vercel.token, "PYTHONPATH": str(ROOT)}
    log = (tmp_path / "workers.log").open("ab")
    workers = [subprocess.Popen([sys.executable, "-c", "from starter.cli import main; main()", "worker",
                                 "--config", str(config_file)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
               for _ in range(3)]
    try:
        handles = [await client.start_workflow(
            AppRollbackWorkflow.run, AppRollbackInput(service=name, reason="many workers"),
            id=f"wf-{name}-{uuid.uuid4().hex[:6]}", task_queue=task_queue, result_type=AppRollbackResult)
            for name in SERVICES]

        async def some_rollbacks_posted() -> bool:
            return vercel.count("POST", "/rollback/") >= 6
        await assert_eventually(some_rollbacks_posted, timeout=60, interval=0.05,
                                message="6 Vercel rollbacks posted")
        posted_at_kill = vercel.count("POST", "/rollback/")
        busy = await running_attempts(handles)
        victim = max(workers, key=lambda w: busy[f"{w.pid}@{socket.gethostname()}"])  # the one mid-way through most
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        failed = await fail_attempts_of(client, handles, victim.pid)

        results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), timeout=80)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
        for worker in workers:
            try:
                worker.wait(10)
            except subprocess.TimeoutExpired:
                worker.kill()
        log.close()

    assert posted_at_kill < len(SERVICES), "the kill came after every rollback was posted"
    assert failed >= 1, "the killed worker was running nothing"
    assert [r.outcome for r in results] == ["rolled_back"] * len(SERVICES), [r.message for r in results]
    for handle in handles:
        assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
    # Vercel: one rollback POST per project, never a promote (nothing was undone)
    for name in SERVICES:
        assert vercel.count("POST", f"/projects/prj_{name}/rollback/") == 1, name
        assert vercel.production[f"prj_{name}"] == f"dpl_{name}_good"
    assert vercel.count("POST", "/promote/") == 0
    # Slack: every message once, and each service told it rolled back exactly once
    texts = collections.Counter(m["text"] for m in slack.messages)
    assert [t for t, n in texts.items() if n > 1] == []
    for name in SERVICES:
        assert sum(1 for t in texts if t.startswith(f"{name} rolled back:")) == 1, name
    # Statuspage: one incident per service, resolved
    keys = collections.Counter(i["metadata"]["rollback"]["key"] for i in statuspage.incidents.values())
    assert len(keys) == len(SERVICES) and set(keys.values()) == {1}
    assert {i["status"] for i in statuspage.incidents.values()} == {"resolved"}
    # the records live in the shared database, and no worker wrote a ledger file
    with psycopg.connect(state_dsn) as db:
        kinds = dict(db.execute("SELECT kind, count(*) FROM rollback_state GROUP BY kind").fetchall())
    assert kinds["slack"] == len(slack.messages) and kinds["statuspage"] == len(SERVICES)
    assert kinds["vercel-rolled-away"] == len(SERVICES) and kinds["artifacts"] == len(SERVICES)
    assert [p for p in state_dir.rglob("*") if p.is_file()] == []
    print(f"posted before the kill: {posted_at_kill}; dead attempts failed: {failed}")
