"""Crash matrix: the worker is SIGKILLed at every activity call of every destructive workflow (app
rollback on Docker, migration rollback, database restore, volume backup + restore), in three
passes: at the start of each call; half-way, at each call's first heartbeat (only long steps
beat); at its end (the work done, Temporal not told). A new worker takes over each time. The runs
must end as they would without crashes, with every side effect once, the old state kept, nothing
half-made and no kill switch left off.

Each case is one run through a chain of workers (tests/crash_worker.py): worker n dies at the n-th
call, its dead attempts are failed by ID (what Temporal does by itself once the activity's
timeout passes: up to minutes, so the test does not wait for it) and a warm standby takes over.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
import yaml
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.backups import sha256_of
from activities.docker import DeployLedger, deploy
from activities.migrations import apply_up
from starter import engines
from tests.conftest import running_worker
from tests.crash_worker import crashes
from tests.helpers import create_database, set_postgres_flag, shop_service
from tests.integration.test_docker_rollback import docker_service
from tests.integration.test_migrations import flag
from tests.integration.test_restore import count, databases
from tests.integration.test_volume import read, volume_of
from tests.migration_sets import columns, tables, tracking, write_migrations
from workflows import (AppRollbackWorkflow, BackupWorkflow, DatabaseRestoreWorkflow, MigrationRollbackWorkflow,
                       VolumeBackupWorkflow, VolumeRestoreWorkflow)
from workflows.base import PHASE_KEY
from workflows.models import (AppRollbackInput, AppRollbackResult, ApprovalInput, BackupInput, BackupManifest,
                              MigrationRollbackInput, MigrationRollbackResult, RestoreInput, RestoreResult,
                              VolumeInput, VolumeManifest, VolumeRestoreInput, VolumeRestoreResult)

ROOT = Path(__file__).resolve().parents[2]
each_point = pytest.mark.parametrize("at", ("start", "beat", "end"))


class CrashingWorkers:
    """A chain of crash workers on one task queue: each dies at the next activity call not yet
    crashed at; its dead attempts are failed by ID and a warm standby takes over at once."""

    def __init__(self, client: Client, address: str, config_path: Path, task_queue: str, at: str, directory: Path,
                 only: str | None = None):
        self.client, self.task_queue, self.at = client, task_queue, at
        self.ledger = directory / f"crashes-{task_queue}.jsonl"
        self.log = directory / f"workers-{task_queue}.log"
        self.command = [sys.executable, "-m", "tests.crash_worker", "--config", str(config_path), "--task-queue",
                        task_queue, "--ledger", str(self.ledger), "--at", at, "--standby",
                        *(["--only", only] if only else [])]
        self.env = {**os.environ, "TEMPORAL_ADDRESS": address, "PYTHONPATH": str(ROOT)}
        self.current = self.standby = None
        self.supervisor: asyncio.Task | None = None

    def _spawn(self) -> subprocess.Popen:
        return subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdin=subprocess.PIPE,
                                stdout=self.log.open("ab"), stderr=subprocess.STDOUT)

    @staticmethod
    def _go(worker: subprocess.Popen) -> None:
        worker.stdin.write(b"go\n")
        worker.stdin.flush()

    def crashes(self) -> list[dict]:
        return crashes(self.ledger)

    async def __aenter__(self) -> "CrashingWorkers":
        self.current, self.standby = self._spawn(), self._spawn()
        self._go(self.current)
        self.supervisor = asyncio.create_task(self._supervise())
        return self

    async def _supervise(self) -> None:
        while True:
            seen = len(self.crashes())
            code = await asyncio.to_thread(self.current.wait)
            ledger = self.crashes()
            if len(ledger) != seen + 1:
                raise AssertionError(f"a crash worker exited ({code}) without crashing: see {self.log}")
            for dead in ledger[-1]["calls"]:
                handle = self.client.get_async_activity_handle(
                    workflow_id=dead["workflow_id"], run_id=dead["run_id"], activity_id=dead["activity_id"])
                try:
                    await handle.fail(ApplicationError(f"worker killed (crash matrix, at {self.at})", type="WorkerKilled"))
                except RPCError as exc:
                    if exc.status != RPCStatusCode.NOT_FOUND:
                        raise
            self.current, self.standby = self.standby, self._spawn()
            self._go(self.current)

    async def run(self, handle: WorkflowHandle, timeout: float = 240, approvals: int = 0):
        """The run's result; approves each time the run waits for a decision (`approvals` times)."""
        waiting = [asyncio.ensure_future(handle.result()), self.supervisor]
        if approvals:
            waiting.append(asyncio.ensure_future(approve_when_asked(handle, approvals)))
        try:
            done, _ = await asyncio.wait(waiting[:2], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                raise AssertionError(f"the run did not end within {timeout}s after {len(self.crashes())} crashes; "
                                     f"last: {self.crashes()[-1:]}")
            try:
                return done.pop().result()
            except WorkflowFailureError as exc:
                raise AssertionError(f"the run failed: {exc.cause}; {await story(handle)}") from exc
        finally:
            for task in waiting[2:]:
                task.cancel()

    async def __aexit__(self, *exc) -> None:
        self.supervisor.cancel()
        for worker in (self.current, self.standby):
            worker.kill()
            await asyncio.to_thread(worker.wait)
            worker.stdin.close()


async def story(handle: WorkflowHandle) -> str:
    """The activity attempts and failures of a run, for a failing test's message."""
    lines = []
    async for event in handle.fetch_history_events():
        if event.HasField("activity_task_scheduled_event_attributes"):
            lines.append(f"{event.event_id} {event.activity_task_scheduled_event_attributes.activity_type.name}")
        elif event.HasField("activity_task_failed_event_attributes"):
            failure = event.activity_task_failed_event_attributes.failure
            lines.append(f"{event.event_id} failed: {failure.message}")
        elif event.HasField("child_workflow_execution_failed_event_attributes"):
            lines.append(f"{event.event_id} child failed: "
                         f"{event.child_workflow_execution_failed_event_attributes.failure.cause.message}")
    return "; ".join(lines)


async def approve_when_asked(handle: WorkflowHandle, approvals: int) -> None:
    """Approve like a person watching the UI: the phase search attribute (no worker needed)."""
    given = 0
    while given < approvals:
        phase = (await handle.describe()).typed_search_attributes.get(PHASE_KEY)
        if phase == "awaiting_approval":
            try:
                await asyncio.wait_for(handle.execute_update(
                    "approve", ApprovalInput(approver="oncall", reason="crash matrix")), 60)
                given += 1
            except WorkflowUpdateFailedError:
                pass  # the search attribute lagged behind the run
        await asyncio.sleep(0.2)


async def activity_types(client: Client, workflow_ids: list[str]) -> set[str]:
    names = set()
    for workflow_id in workflow_ids:
        async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
            if event.HasField("activity_task_scheduled_event_attributes"):
                names.add(event.activity_task_scheduled_event_attributes.activity_type.name)
    return names


async def assert_crashed_everywhere(client: Client, workers: CrashingWorkers, workflow_ids: list[str]) -> None:
    """Every activity type the runs executed was crashed at (at its start or end; half-way, every
    one that heartbeats), and every crash was retried."""
    crashed = {call["activity"] for crash in workers.crashes() for call in crash["calls"]}
    if workers.at == "beat":
        assert crashed, "no step heartbeated"
        return
    executed = await activity_types(client, workflow_ids)
    assert executed <= crashed, f"never crashed at {sorted(executed - crashed)}"
    # side-by-side steps may die in one crash: count the calls killed, not the crashes
    assert sum(len(crash["calls"]) for crash in workers.crashes()) >= len(executed)


def with_notify(config, slack_env: str = "TEST_SLACK_WEBHOOK", statuspage=None) -> None:
    """Give every service of `config` a Slack webhook (and a status page): messages are counted."""
    path = Path(config._path)
    document = yaml.safe_load(path.read_text())
    for service in document["services"].values():
        service["notify"] = {"slack_webhook_env": slack_env}
        if statuspage is not None:
            service["notify"]["statuspage"] = {"page_id": statuspage.page_id, "api_key_env": "TEST_STATUSPAGE_KEY",
                                               "api_url": statuspage.url}
    path.write_text(yaml.safe_dump(document))


def assert_each_message_once(slack) -> None:
    texts = [m["text"] for m in slack.messages]
    assert texts and len(set(texts)) == len(texts), texts


def half_made_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".partial" in p.name or p.name.endswith(".tmp")]


def start(client: Client, workflow, request, task_queue: str, result_type, workflow_id: str | None = None):
    return client.start_workflow(workflow, request, id=workflow_id or f"crash-{uuid.uuid4().hex[:12]}",
                                 task_queue=task_queue, result_type=result_type)


# ---------------------------------------------------------------------------------------------


@each_point
@pytest.mark.docker
async def test_app_rollback_on_docker(at, client, temporal_address, task_queue, docker_engine, write_config, slack,
                                      statuspage, tmp_path):
    name, port = f"web-{uuid.uuid4().hex[:8]}", engines.free_port()
    config = write_config({"web": docker_service(docker_engine, name, port, policy={"app_approval": "always"})})
    with_notify(config, statuspage=statuspage)
    docker = docker_engine.client
    ledger = DeployLedger.of(config.config, "web")
    docker.containers.run(docker_engine.images["v1"], name=name, detach=True, network_mode="host", init=True,
                          environment={"PORT": str(port)}, labels={"io.rollback.test": "1"})
    ledger.record(docker_engine.images["v1"], "demo-web:v1")
    deploy(docker, name, "demo-web:v2", ledger)

    async with CrashingWorkers(client, temporal_address, config._path, task_queue, at, tmp_path) as workers:
        handle = await start(client, AppRollbackWorkflow.run, AppRollbackInput(service="web", reason="v2 errors"),
                             task_queue, AppRollbackResult)
        result = await workers.run(handle, approvals=1)
    assert result.outcome == "rolled_back", result.message
    container = docker.containers.get(name)
    assert container.attrs["Image"] == docker_engine.images["v1"] and container.status == "running"
    ours = [c for c in docker.containers.list(all=True) if c.name.startswith(f"{name}-")]
    assert [(c.image.id, c.status) for c in ours] == [(docker_engine.images["v2"], "exited")]  # kept aside, once
    assert_each_message_once(slack)
    (incident,) = statuspage.incidents.values()
    assert incident["status"] == "resolved"
    assert (Path(result.artifact_dir) / "postmortem.md").exists()
    assert half_made_files(tmp_path) == []
    await assert_crashed_everywhere(client, workers, [handle.id])


@each_point
@pytest.mark.postgres
async def test_migration_rollback(at, client, temporal_address, task_queue, postgres, write_config, platform, slack,
                                  monkeypatch, tmp_path):
    _, dsn = create_database(postgres, "mig")
    directory = tmp_path / "migrations"
    versions = write_migrations("golang-migrate", directory)
    apply_up(dsn, "golang-migrate", directory)
    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO accounts (email) SELECT 'user' || g || '@example.com' FROM generate_series(1, 10) g")
        conn.execute("UPDATE accounts SET plan = CASE WHEN id <= 4 THEN 'pro' ELSE 'free' END")
    set_postgres_flag(dsn, "PROCESSING_ENABLED", "true")
    monkeypatch.setenv("TEST_MIG_DSN", dsn)
    backups = tmp_path / "backups"
    config = write_config({"billing": {
        "app": {"provider": "docker", "docker": {"container": "unused"}},
        "health": {"url": f"{platform.url}/health", "consecutive_checks": 1, "interval_seconds": 0.1},
        "database": {"dsn_env": "TEST_MIG_DSN", "migration_tool": "golang-migrate", "migrations_dir": str(directory),
                     "backup_dir": str(backups), "critical_tables": ["accounts"]},
        "kill_switches": [{"name": "PROCESSING_ENABLED", "store": "postgres"}],
        "notify": {"slack_webhook_env": "TEST_SLACK_WEBHOOK"},
    }})

    async with CrashingWorkers(client, temporal_address, config._path, task_queue, at, tmp_path) as workers:
        # to the first version: two down steps, the data-loss guard exports the plan column and asks
        handle = await start(client, MigrationRollbackWorkflow.run,
                             MigrationRollbackInput(service="billing", target=versions[0]), task_queue,
                             MigrationRollbackResult)
        result = await workers.run(handle, approvals=1)
    assert result.outcome == "rolled_back", result.message
    assert columns(dsn, "accounts") == ["id", "email"] and "audit" not in tables(dsn)
    assert tracking(dsn, "golang-migrate") == [(1, False)]
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM accounts").fetchone()[0] == 10
    assert flag(dsn, "PROCESSING_ENABLED") == "true"
    archives = sorted(p.name for p in backups.iterdir() if not p.name.endswith(".manifest.json"))
    assert archives == [f"{result.emergency_backup.backup_id}.dump"]  # one emergency backup
    assert sha256_of(backups / archives[0]) == result.emergency_backup.sha256
    exports = [p for p in Path(result.artifact_dir).rglob("*.csv")]
    assert len(exports) == 1 and len(exports[0].read_text().splitlines()) == 11  # header + the ten plans, once
    assert_each_message_once(slack)
    assert half_made_files(tmp_path) == []
    await assert_crashed_everywhere(client, workers, [handle.id, f"{handle.id}-emergency-backup"])


async def damaged_shop(client, task_queue, postgres, write_config, platform, monkeypatch, tmp_path):
    """A shop database with a verified backup, then five new orders and thirty deleted ones."""
    name, dsn = create_database(postgres, "shop")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL)")
        conn.execute("INSERT INTO users SELECT g, 'user ' || g FROM generate_series(1, 100) g")
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, user_id int REFERENCES users, total numeric, "
                     "created_at timestamptz NOT NULL DEFAULT now())")
        conn.execute("INSERT INTO orders SELECT g, 1 + g % 100, g * 1.5 FROM generate_series(1, 50) g")
    set_postgres_flag(dsn, "MAINTENANCE_MODE", "off")
    monkeypatch.setenv("TEST_SHOP_DSN", dsn)
    backups = tmp_path / "backups"
    config = write_config({"shop": shop_service(platform, backups,
                                                notify={"slack_webhook_env": "TEST_SLACK_WEBHOOK"})})
    async with running_worker(client, config, task_queue):
        source = await client.execute_workflow(BackupWorkflow.run, BackupInput(service="shop"), id=f"wf-{uuid.uuid4()}",
                                               task_queue=task_queue, result_type=BackupManifest)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO orders (id, user_id, total) SELECT g, 1, 9.99 FROM generate_series(1001, 1005) g")
        conn.execute("DELETE FROM orders WHERE id BETWEEN 21 AND 50")  # the incident
    return name, dsn, backups, config, source


@each_point
@pytest.mark.postgres
async def test_database_restore(at, client, temporal_address, task_queue, postgres, write_config, platform, slack,
                                monkeypatch, tmp_path):
    name, dsn, backups, config, source = await damaged_shop(client, task_queue, postgres, write_config, platform,
                                                            monkeypatch, tmp_path)

    async with CrashingWorkers(client, temporal_address, config._path, task_queue, at, tmp_path) as workers:
        handle = await start(client, DatabaseRestoreWorkflow.run, RestoreInput(service="shop", source=source.backup_id),
                             task_queue, RestoreResult)
        result = await workers.run(handle, approvals=1)
    assert result.outcome == "restored", result.message
    assert (count(dsn, "users"), count(dsn, "orders")) == (100, 50)
    assert flag(dsn, "MAINTENANCE_MODE") == "off"  # the maintenance switch is back as it was
    assert databases(postgres, f"{name}_restore_") == set()  # no half-restored stray
    assert databases(postgres, f"{name}_before_restore_") == {result.kept_old_as}  # the old one kept, once
    assert count(postgres.rsplit("/", 1)[0] + f"/{result.kept_old_as}", "orders") == 25
    archives = sorted(p.name for p in backups.iterdir() if not p.name.endswith(".manifest.json"))
    assert archives == sorted([f"{source.backup_id}.dump", f"{result.safety_backup.backup_id}.dump"])
    assert sha256_of(backups / f"{result.safety_backup.backup_id}.dump") == result.safety_backup.sha256
    exported = (Path(result.artifact_dir) / "recent-rows" / "public.orders.csv").read_text().splitlines()
    assert len(exported) == 6  # header + the five newer orders, once
    assert_each_message_once(slack)
    assert half_made_files(tmp_path) == []
    await assert_crashed_everywhere(client, workers, [handle.id, f"{handle.id}-safety-backup"])


@each_point
@pytest.mark.docker
async def test_volume_backup_and_restore(at, client, temporal_address, task_queue, docker_engine, write_config, slack,
                                         tmp_path):
    docker = docker_engine.client
    name, volume, port = f"vol-{uuid.uuid4().hex[:8]}", f"data-{uuid.uuid4().hex[:8]}", engines.free_port()
    docker.volumes.create(volume)
    container = docker.containers.run(docker_engine.images["v1"], name=name, detach=True, network_mode="host",
                                      init=True, environment={"PORT": str(port)}, labels={"io.rollback.test": "1"},
                                      volumes={volume: {"bind": "/data", "mode": "rw"}})
    container.exec_run(["sh", "-c", "mkdir -p /data/uploads && echo original > /data/uploads/a.txt"])
    config = write_config({"web": docker_service(docker_engine, name, port)})
    with_notify(config)

    async with CrashingWorkers(client, temporal_address, config._path, task_queue, at, tmp_path) as workers:
        backup = await start(client, VolumeBackupWorkflow.run, VolumeInput(service="web", volume=volume), task_queue,
                             VolumeManifest)
        manifest = await workers.run(backup)
        docker.containers.get(name).exec_run(["sh", "-c", "echo corrupted > /data/uploads/a.txt"])
        handle = await start(client, VolumeRestoreWorkflow.run, VolumeRestoreInput(service="web",
                                                                                   source=manifest.backup_id),
                             task_queue, VolumeRestoreResult)
        result = await workers.run(handle, approvals=1)
    assert result.outcome == "restored", result.message
    assert volume_of(docker, name) == result.new_volume != volume
    assert read(docker, name, "/data/uploads/a.txt") == "original"
    ours = [c for c in docker.containers.list(all=True) if c.name.startswith(f"{name}-")]
    assert [(c.name, c.status) for c in ours] == [(result.details["aside_name"], "exited")]  # kept aside, once
    assert volume_of(docker, result.details["aside_name"]) == volume
    assert [c.name for c in docker.containers.list(all=True) if c.name.endswith("-fill")] == []
    restored = {v.name for v in docker.volumes.list() if v.name.startswith(f"{volume}_restore_")}
    assert restored == {result.new_volume}
    docker.volumes.get(volume)  # kept
    volume_dir = Path(manifest.archive).parent
    assert sorted(p.name for p in volume_dir.iterdir() if not p.name.endswith(".json")) == [Path(manifest.archive).name]
    assert_each_message_once(slack)
    assert half_made_files(tmp_path) == []
    await assert_crashed_everywhere(client, workers, [backup.id, handle.id])


@pytest.mark.postgres
@pytest.mark.parametrize("at", ("start", "end"))  # a re-import of five rows never heartbeats
async def test_reimport_is_never_run_twice(at, client, temporal_address, task_queue, postgres, write_config, platform,
                                           slack, monkeypatch, tmp_path):
    """postgres.reimport_rows allows one attempt (a blind second one could double rows): a worker
    dying in it ends the run failed, the rows in at most once, and the switches off, said loudly."""
    name, dsn, backups, config, source = await damaged_shop(client, task_queue, postgres, write_config, platform,
                                                            monkeypatch, tmp_path)
    async with CrashingWorkers(client, temporal_address, config._path, task_queue, at, tmp_path,
                               only="postgres.reimport_rows") as workers:
        handle = await start(client, DatabaseRestoreWorkflow.run,
                             RestoreInput(service="shop", source=source.backup_id, reimport_recent=True),
                             task_queue, RestoreResult)
        with pytest.raises(AssertionError, match="the run failed") as failure:
            await workers.run(handle, approvals=1)
        status = await handle.query(DatabaseRestoreWorkflow.status)
    crashed = [c["activity"] for crash in workers.crashes() for c in crash["calls"]]
    assert crashed == ["postgres.reimport_rows"], failure.value
    reimported = 5 if at == "end" else 0  # the dead attempt's transaction committed, or never began
    assert count(dsn, "orders") == 50 + reimported and count(dsn, "users") == 100
    assert flag(dsn, "MAINTENANCE_MODE") == "on"  # processing stays stopped ...
    escalations = [e.message for e in status.timeline if e.kind.value == "escalated"]
    assert escalations and "MAINTENANCE_MODE (was off)" in escalations[-1]  # ... and says so
    assert databases(postgres, f"{name}_restore_") == set()
    assert len(databases(postgres, f"{name}_before_restore_")) == 1
    assert any("processing stays stopped" in m["text"] for m in slack.messages)
