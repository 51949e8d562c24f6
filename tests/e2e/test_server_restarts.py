"""The parts a rollback depends on die under it: the Temporal server is SIGKILLed and restarted
(on the same port and SQLite file) while a run waits for approval and while it executes; the
PostgreSQL cluster restarts (immediate shutdown: every session killed) while pg_dump and while
pg_restore run. The runs end as they would have, with nothing half-made and nothing done twice."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client

from activities.backups import sha256_of
from activities.docker import DeployLedger, deploy
from starter import engines
from tests.conftest import running_worker
from tests.helpers import assert_eventually, create_database, set_postgres_flag, shop_service, wait_for_phase
from tests.integration.test_docker_rollback import docker_service
from tests.integration.test_migrations import flag
from tests.integration.test_restore import count, databases
from worker.codec import data_converter
from workflows import AppRollbackWorkflow, BackupWorkflow, DatabaseRestoreWorkflow
from workflows.models import (AppRollbackInput, AppRollbackResult, ApprovalInput, BackupInput, BackupManifest,
                              RestoreInput, RestoreResult)


class TemporalServer:
    """Our own dev server with SQLite persistence, so its state survives a SIGKILL."""

    def __init__(self, data_dir: Path):
        self.data_dir, self.port, self.ui_port = data_dir, engines.free_port(), engines.free_port()
        self.service = engines.start_temporal(data_dir, self.port, self.ui_port, headless=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def sigkill_and_restart(self) -> None:
        self.service.process.kill()
        self.service.process.wait(10)
        self.service = engines.start_temporal(self.data_dir, self.port, self.ui_port, headless=True)

    def stop(self) -> None:
        self.service.stop()


@pytest.fixture
async def server(tmp_path):
    try:
        own = TemporalServer(tmp_path / "temporal")
    except engines.EngineError as exc:
        pytest.fail(str(exc))
    client = await Client.connect(own.address, data_converter=data_converter())
    yield own, client
    own.stop()


async def answering(client: Client) -> bool:
    try:
        await client.workflow_service.get_system_info(GetSystemInfoRequest())
        return True
    except Exception:  # noqa: BLE001 - still starting
        return False


def docker_app(docker_engine, write_config, stop_timeout: int = 2):
    """demo-web v1 then v2 on the real engine; the service config asks for approval."""
    name, port = f"web-{uuid.uuid4().hex[:8]}", engines.free_port()
    service = docker_service(docker_engine, name, port, policy={"app_approval": "always"})
    service["app"]["docker"]["stop_timeout"] = stop_timeout
    config = write_config({"web": service})
    ledger = DeployLedger.of(config.config, "web")
    docker_engine.client.containers.run(docker_engine.images["v1"], name=name, detach=True, network_mode="host",
                                        environment={"PORT": str(port)}, labels={"io.rollback.test": "1"})
    ledger.record(docker_engine.images["v1"], "demo-web:v1")
    deploy(docker_engine.client, name, "demo-web:v2", ledger)
    return name, config


def assert_rolled_back_once(docker_engine, name: str, result: AppRollbackResult) -> None:
    assert result.outcome == "rolled_back", result.message
    docker = docker_engine.client
    container = docker.containers.get(name)
    assert container.attrs["Image"] == docker_engine.images["v1"] and container.status == "running"
    ours = [c for c in docker.containers.list(all=True) if c.name.startswith(f"{name}-")]
    assert [(c.image.id, c.status) for c in ours] == [(docker_engine.images["v2"], "exited")]  # kept aside, once


@pytest.mark.docker
async def test_temporal_server_killed_during_an_approval_wait(server, docker_engine, write_config):
    own, client = server
    name, config = docker_app(docker_engine, write_config)
    task_queue = f"tq-{uuid.uuid4()}"
    async with running_worker(client, config, task_queue):
        handle = await client.start_workflow(AppRollbackWorkflow.run, AppRollbackInput(service="web"),
                                             id=f"wf-{uuid.uuid4()}", task_queue=task_queue,
                                             result_type=AppRollbackResult)
        await wait_for_phase(handle, "awaiting_approval", timeout=60)
        await asyncio.to_thread(own.sigkill_and_restart)
        await assert_eventually(lambda: answering(client), timeout=60, message="server answering again")
        status = await wait_for_phase(handle, "awaiting_approval", timeout=60)  # the wait survived
        assert docker_engine.client.containers.get(name).attrs["Image"] == docker_engine.images["v2"]
        await handle.execute_update(AppRollbackWorkflow.approve, ApprovalInput(approver="lead", reason="go"))
        result = await asyncio.wait_for(handle.result(), timeout=120)
    assert_rolled_back_once(docker_engine, name, result)
    assert [e.kind.value for e in status.timeline].count("approval_requested") == 1


@pytest.mark.docker
async def test_temporal_server_killed_during_the_execute_step(server, docker_engine, write_config):
    own, client = server
    # httpd as PID 1 ignores SIGTERM: the stop of v2 inside docker.execute takes the whole timeout
    name, config = docker_app(docker_engine, write_config, stop_timeout=6)
    task_queue = f"tq-{uuid.uuid4()}"
    async with running_worker(client, config, task_queue):
        handle = await client.start_workflow(AppRollbackWorkflow.run, AppRollbackInput(service="web"),
                                             id=f"wf-{uuid.uuid4()}", task_queue=task_queue,
                                             result_type=AppRollbackResult)
        await wait_for_phase(handle, "awaiting_approval", timeout=60)
        await handle.execute_update(AppRollbackWorkflow.approve, ApprovalInput(approver="lead", reason="go"))

        async def executing() -> bool:
            pending = (await handle.describe()).raw_description.pending_activities
            return any(a.activity_type.name == "docker.execute"
                       and a.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED for a in pending)

        await assert_eventually(executing, timeout=60, interval=0.05, message="docker.execute running")
        await asyncio.to_thread(own.sigkill_and_restart)
        await assert_eventually(lambda: answering(client), timeout=60, message="server answering again")
        result = await asyncio.wait_for(handle.result(), timeout=180)
    assert_rolled_back_once(docker_engine, name, result)


# ---------------------------------------------------------------------------------------------
# PostgreSQL restarts


class Cluster:
    """A cluster of our own (the session's serves every other test): restarted with -m immediate,
    which kills every backend the way a crash does, then started on the same port."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="rbpgr-", dir="/tmp"))
        self.service = engines.start_postgres(self.root)
        self.admin = self.service.address

    def restart(self) -> None:
        as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        # -l: the new postmaster must not inherit (and hold open) a pipe of ours
        subprocess.run([*as_user, "/usr/lib/postgresql/15/bin/pg_ctl", "-D", str(self.root / "db"), "-l",
                        str(self.root / "log"), "-m", "immediate", "-w", "restart"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)

    def stop(self) -> None:
        self.service.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def cluster(postgres):  # noqa: ARG001 - skips with the reason when PostgreSQL cannot start
    own = Cluster()
    yield own
    own.stop()


def shop(cluster: Cluster, write_config, monkeypatch, tmp_path, platform, rows: int):
    name, dsn = create_database(cluster.admin, "shop")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id int PRIMARY KEY, payload text)")
        conn.execute("INSERT INTO events SELECT g, md5(g::text) FROM generate_series(1, %s) g", (rows,))
        conn.execute("CREATE INDEX events_payload ON events (payload)")
    set_postgres_flag(dsn, "MAINTENANCE_MODE", "off")
    monkeypatch.setenv("TEST_SHOP_DSN", dsn)
    config = write_config({"shop": shop_service(platform, tmp_path / "backups")})
    return name, dsn, config


async def last_attempt(handle) -> int:
    return max([e.activity_task_started_event_attributes.attempt async for e in handle.fetch_history_events()
                if e.HasField("activity_task_started_event_attributes")])


def archives(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".manifest.json"))


@pytest.mark.postgres
async def test_postgres_restart_during_a_backup(client, task_queue, cluster, write_config, monkeypatch, tmp_path,
                                                platform):
    name, dsn, config = shop(cluster, write_config, monkeypatch, tmp_path, platform, rows=1000)
    blocker = psycopg.connect(dsn)  # pg_dump waits for this lock: the restart finds it mid-dump
    blocker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
    try:
        async with running_worker(client, config, task_queue):
            handle = await client.start_workflow(BackupWorkflow.run, BackupInput(service="shop"),
                                                 id=f"wf-{uuid.uuid4()}", task_queue=task_queue,
                                                 result_type=BackupManifest)

            def dump_waiting() -> bool:
                with psycopg.connect(cluster.admin) as conn:
                    return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump' "
                                        "AND wait_event_type = 'Lock'").fetchone()[0] > 0

            await assert_eventually(lambda: asyncio.to_thread(dump_waiting), timeout=60, message="pg_dump waiting")
            await asyncio.to_thread(cluster.restart)  # the blocker's session dies with it
            manifest = await asyncio.wait_for(handle.result(), timeout=120)
    finally:
        blocker.close()
    backups = tmp_path / "backups"
    assert manifest.verified and manifest.tables["public.events"] == 1000
    assert archives(backups) == [f"{manifest.backup_id}.dump"]  # no partial of the failed attempt
    assert sha256_of(backups / archives(backups)[0]) == manifest.sha256
    assert await last_attempt(handle) >= 2  # the dump really failed and was redone


@pytest.mark.postgres
async def test_postgres_restart_during_a_restore(client, task_queue, cluster, write_config, monkeypatch, tmp_path,
                                                 platform):
    name, dsn, config = shop(cluster, write_config, monkeypatch, tmp_path, platform, rows=400_000)
    async with running_worker(client, config, task_queue):
        source = await client.execute_workflow(BackupWorkflow.run, BackupInput(service="shop"), id=f"wf-{uuid.uuid4()}",
                                               task_queue=task_queue, result_type=BackupManifest)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM events WHERE id > 1000")  # the damage
        handle = await client.start_workflow(DatabaseRestoreWorkflow.run,
                                             RestoreInput(service="shop", source=source.backup_id),
                                             id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=RestoreResult)

        def restoring() -> bool:
            with psycopg.connect(cluster.admin) as conn:
                return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_restore' "
                                    "AND datname LIKE %s", (f"{name}_restore_%",)).fetchone()[0] > 0

        await assert_eventually(lambda: asyncio.to_thread(restoring), timeout=120, interval=0.05,
                                message="pg_restore running")
        await asyncio.to_thread(cluster.restart)
        await wait_for_phase(handle, "awaiting_approval", timeout=180)
        assert count(dsn, "events") == 1000  # nothing swapped before the approval
        await handle.execute_update(DatabaseRestoreWorkflow.approve, ApprovalInput(approver="dba", reason="go"))
        result = await asyncio.wait_for(handle.result(), timeout=120)
    assert result.outcome == "restored", result.message
    assert count(dsn, "events") == 400_000 and flag(dsn, "MAINTENANCE_MODE") == "off"
    assert databases(cluster.admin, f"{name}_restore_") == set()  # the half-restored one redone, then swapped in
    assert databases(cluster.admin, f"{name}_before_restore_") == {result.kept_old_as}
    assert count(cluster.admin.rsplit("/", 1)[0] + f"/{result.kept_old_as}", "events") == 1000
    backups = tmp_path / "backups"
    assert archives(backups) == sorted([f"{source.backup_id}.dump", f"{result.safety_backup.backup_id}.dump"])
    assert await last_attempt(handle) >= 2  # pg_restore really was redone
