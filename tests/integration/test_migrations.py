"""Migration rollback on a real PostgreSQL, for every tool format: the schema, the data and the
tracking table are what they were at the target version; the data-loss guard exports and asks;
kill switches are off during the work and restored after; failures leave a truthful state."""

from __future__ import annotations

import asyncio
import csv
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from temporalio.client import WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import migrations as migration_activities
from activities.common import ConfigSource
from activities.migrations import MigrationActivities, advisory_lock_id, apply_up
from starter.flags import flag_routes
from tests.conftest import ROOT, running_worker, unavailable
from tests.contract.server import serve
from tests.helpers import create_database, kinds, set_postgres_flag, wait_for_phase
from tests.migration_sets import (
    MIGRATIONS,
    SQL_TOOLS,
    alembic_upgrade,
    columns,
    tables,
    tracking,
    write_alembic,
    write_migrations,
)
from workflows import MigrationRepairWorkflow, MigrationRollbackWorkflow
from workflows.models import (
    ApprovalInput,
    DownStepRequest,
    MigrationPlanRequest,
    MigrationRepairInput,
    MigrationRepairResult,
    MigrationRollbackInput,
    MigrationRollbackResult,
    MigrationStep,
    ServiceRef,
)

pytestmark = pytest.mark.postgres
APPROVAL = ApprovalInput(approver="oncall", reason="checked the exported rows")


def flag(dsn: str, name: str) -> str | None:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT value FROM rollback_flags WHERE name = %s", (name,)).fetchone()
        return row[0] if row else None


@pytest.fixture
def migrated(postgres, write_config, monkeypatch, tmp_path, platform):
    """A database migrated to the third ("bad") version by `tool`, ten accounts on the free plan,
    and a service config with a PostgreSQL kill switch that is on."""

    def make(tool: str, migrations=MIGRATIONS, policy: str = "never", kill_switches=None, **database):
        _, dsn = create_database(postgres, "mig")
        directory = tmp_path / "migrations"
        if tool == "alembic":
            versions = write_alembic(directory)
            alembic_upgrade(directory, dsn)
        elif tool == "dbmate":  # the real binary creates and fills its own tracking table
            versions = write_migrations(tool, directory, migrations)
            up = dbmate(dsn, directory, "up")
            assert up.returncode == 0, up.stderr
        else:
            versions = write_migrations(tool, directory, migrations)
            assert apply_up(dsn, tool, directory) == versions
        with psycopg.connect(dsn) as conn:
            conn.execute("INSERT INTO accounts (email) SELECT 'user' || g || '@example.com' FROM generate_series(1, 10) g")
            conn.execute("UPDATE accounts SET plan = CASE WHEN id <= 4 THEN 'pro' ELSE 'free' END")
        set_postgres_flag(dsn, "PROCESSING_ENABLED", "true")
        monkeypatch.setenv("TEST_MIG_DSN", dsn)
        config = write_config({"billing": {
            "app": {"provider": "docker", "docker": {"container": "unused"}},
            "health": {"url": f"{platform.url}/health", "consecutive_checks": 1, "interval_seconds": 0.1},
            "database": {"dsn_env": "TEST_MIG_DSN", "migration_tool": tool, "migrations_dir": str(directory),
                         "backup_dir": str(tmp_path / "backups"), "critical_tables": ["accounts"], **database},
            "kill_switches": kill_switches or [{"name": "PROCESSING_ENABLED", "store": "postgres"}],
            "policy": {"database_approval": policy},
        }})
        return dsn, versions, config

    return make


def dbmate(dsn: str, directory: Path, *args: str) -> subprocess.CompletedProcess:
    """The real dbmate (npm `dbmate@2`, installed into .tools/ by `make test`)."""
    binary = next((str(c) for c in (ROOT / ".tools" / "node_modules" / ".bin" / "dbmate", shutil.which("dbmate"))
                   if c and Path(c).exists()), None)
    if binary is None:
        unavailable("dbmate is not installed: make .tools/node_modules/.bin/dbmate")
    return subprocess.run([binary, "--url", f"{dsn}?sslmode=disable", "--migrations-dir", str(directory),
                           "--no-dump-schema", *args], capture_output=True, text=True, timeout=60)


async def start(client, task_queue, target: str, dry_run: bool = False) -> WorkflowHandle:
    return await client.start_workflow(
        MigrationRollbackWorkflow.run, MigrationRollbackInput(service="billing", target=target, dry_run=dry_run),
        id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=MigrationRollbackResult)


@pytest.mark.parametrize("tool", [*SQL_TOOLS, "alembic"])
async def test_rollback_to_first_version_with_data_loss_guard(tool, client, task_queue, migrated):
    dsn, versions, config = migrated(tool)
    assert columns(dsn, "accounts") == ["id", "email", "plan", "score"]
    async with running_worker(client, config, task_queue):
        handle = await start(client, task_queue, versions[0])
        state = await wait_for_phase(handle, "awaiting_approval", timeout=60)
        # the guard found the plan values the down script of version 2 drops, and stopped for them
        assert state.waiting_for_approval == "run down migrations"
        assert "10 row(s) from drop column accounts.plan" in state.timeline[-1].message
        exported = next(e for e in state.timeline if e.kind.value == "captured" and "CSV" in e.message)
        csv_file = Path(exported.message.split(": ", 1)[1])
        rows = list(csv.DictReader(csv_file.open()))
        assert len(rows) == 10 and sorted(r["plan"] for r in rows) == ["free"] * 6 + ["pro"] * 4
        # approval really blocks: processing is stopped but the schema is untouched
        assert flag(dsn, "PROCESSING_ENABLED") == "false"
        assert columns(dsn, "accounts") == ["id", "email", "plan", "score"]
        await handle.execute_update("approve", APPROVAL)
        result = await handle.result()

    assert result.outcome == "rolled_back", result.message
    assert columns(dsn, "accounts") == ["id", "email"]
    assert "audit" not in tables(dsn)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM accounts").fetchone()[0] == 10
    expected_tracking = {
        "golang-migrate": [(1, False)],
        "dbmate": [versions[0]],
        "prisma": [(versions[0], False), (versions[1], True), (versions[2], True)],
        "plain": [1],
        "alembic": [versions[0]],
    }[tool]
    assert tracking(dsn, tool) == expected_tracking
    assert flag(dsn, "PROCESSING_ENABLED") == "true"  # put back as it was
    assert result.kill_switches_before == {"PROCESSING_ENABLED": "true"} and result.kill_switches_restored
    assert result.emergency_backup.verified and Path(result.emergency_backup.archive).exists()
    assert [s.version for s in result.plan.steps] == [versions[2], versions[1]]
    status = MigrationActivities(config).status(ServiceRef(service="billing"))
    assert status.current == versions[0] and [m.applied for m in status.migrations] == [True, False, False]
    assert status.last_stable == versions[0]
    assert kinds(result.timeline).index("captured") < kinds(result.timeline).index("approval_requested")


async def rollback_to_first(client, task_queue, config, versions) -> MigrationRollbackResult:
    async with running_worker(client, config, task_queue):
        handle = await start(client, task_queue, versions[0])
        await wait_for_phase(handle, "awaiting_approval", timeout=60)  # the data-loss checkpoint
        await handle.execute_update("approve", APPROVAL)
        result = await handle.result()
    assert result.outcome == "rolled_back", result.message
    return result


async def test_real_dbmate_sees_the_rolled_back_migrations_as_pending_and_reapplies_them(
        client, task_queue, migrated, tmp_path):
    dsn, versions, config = migrated("dbmate")  # applied by `dbmate up` itself
    directory = tmp_path / "migrations"
    await rollback_to_first(client, task_queue, config, versions)

    status = dbmate(dsn, directory, "status")
    applied = [line.split()[-1] for line in status.stdout.splitlines() if line.startswith("[X]")]
    pending = [line.split()[-1] for line in status.stdout.splitlines() if line.startswith("[ ]")]
    assert applied == [f"{versions[0]}_create_accounts.sql"], status.stdout
    assert pending == [f"{versions[1]}_add_plan.sql", f"{versions[2]}_bad_release.sql"], status.stdout
    up = dbmate(dsn, directory, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert columns(dsn, "accounts") == ["id", "email", "plan", "score"] and "audit" in tables(dsn)
    assert tracking(dsn, "dbmate") == versions
    assert "Pending: 0" in dbmate(dsn, directory, "status").stdout


async def test_real_alembic_sees_the_rolled_back_revisions_as_pending_and_reapplies_them(
        client, task_queue, migrated, tmp_path, postgres):
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine

    dsn, versions, config = migrated("alembic")  # upgraded by alembic itself
    directory = tmp_path / "migrations"
    await rollback_to_first(client, task_queue, config, versions)

    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn))
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
            alembic_config = Config(str(directory / "alembic.ini"))
            script = ScriptDirectory.from_config(alembic_config)
            pending = [r.revision for r in script.iterate_revisions("heads", current)]
            assert current == versions[0]
            assert list(reversed(pending)) == versions[1:]  # what `alembic upgrade head` will run
            alembic_config.attributes["connection"] = connection
            command.upgrade(alembic_config, "head")
            connection.commit()
            assert MigrationContext.configure(connection).get_current_revision() == versions[2]
    finally:
        engine.dispose()
    assert columns(dsn, "accounts") == ["id", "email", "plan", "score"] and "audit" in tables(dsn)


async def test_one_step_without_data_loss_needs_no_approval(client, task_queue, migrated):
    dsn, versions, config = migrated("golang-migrate")
    async with running_worker(client, config, task_queue):
        result = await (await start(client, task_queue, "-1")).result()
    assert result.outcome == "rolled_back", result.message
    assert "approval_requested" not in kinds(result.timeline)
    assert tracking(dsn, "golang-migrate") == [(2, False)]
    assert columns(dsn, "accounts") == ["id", "email", "plan"] and "audit" not in tables(dsn)


async def test_dry_run_changes_nothing(client, task_queue, migrated):
    dsn, versions, config = migrated("dbmate")
    async with running_worker(client, config, task_queue):
        result = await (await start(client, task_queue, versions[0], dry_run=True)).result()
    assert result.outcome == "dry_run" and len(result.plan.steps) == 2
    assert sum(d.rows for d in result.plan.data_loss) == 10 and result.emergency_backup is None
    assert columns(dsn, "accounts") == ["id", "email", "plan", "score"]
    assert tracking(dsn, "dbmate") == versions and flag(dsn, "PROCESSING_ENABLED") == "true"


async def test_down_script_failing_half_way_leaves_the_last_good_version(client, task_queue, migrated):
    # fails on the data, after its first statement ran: two accounts share a plan
    broken = [*MIGRATIONS[:2], ("bad_release", MIGRATIONS[2][1],
                                "DROP TABLE audit;\nCREATE UNIQUE INDEX one_per_plan ON accounts (plan);\n"
                                "ALTER TABLE accounts DROP COLUMN score;")]
    dsn, versions, config = migrated("golang-migrate", migrations=broken)
    async with running_worker(client, config, task_queue):
        handle = await start(client, task_queue, versions[0])
        await wait_for_phase(handle, "awaiting_approval", timeout=60)
        await handle.execute_update("approve", APPROVAL)  # the data-loss checkpoint
        state = await wait_for_phase(handle, "awaiting_approval", timeout=60)
        assert state.waiting_for_approval == "restore emergency backup"
        failure = next(e for e in state.timeline if e.kind.value == "failed")
        assert "could not create unique index" in failure.message and "still at 3" in failure.message
        # the first statement of the failed script (DROP TABLE audit) was rolled back with it
        assert "audit" in tables(dsn) and columns(dsn, "accounts") == ["id", "email", "plan", "score"]
        assert tracking(dsn, "golang-migrate") == [(3, False)]
        assert flag(dsn, "PROCESSING_ENABLED") == "false"  # processing stays stopped
        with psycopg.connect(dsn) as conn:  # written after the backup: the restore must not keep it
            conn.execute("INSERT INTO accounts (email) VALUES ('late@example.com')")
        await handle.execute_update("approve", ApprovalInput(approver="oncall", reason="restore it"))
        result = await handle.result()
    assert result.outcome == "compensated", result.message
    assert "compensated" in kinds(result.timeline)
    with psycopg.connect(dsn) as conn:  # the emergency backup is live again
        assert conn.execute("SELECT count(*) FROM accounts").fetchone()[0] == 10
    assert tracking(dsn, "golang-migrate") == [(3, False)] and flag(dsn, "PROCESSING_ENABLED") == "false"


@pytest.mark.parametrize("target, message", [
    ("17", "unknown version '17'"),
    ("3", "nothing to do"),
    ("-5", "cannot go back 5 step(s)"),
    ("last-stable", "no stable version recorded"),
])
async def test_bad_targets_are_refused_before_anything_changes(target, message, migrated):
    dsn, versions, config = migrated("golang-migrate")
    activities = MigrationActivities(config)
    if message == "nothing to do":
        assert activities.plan(MigrationPlanRequest(service="billing", target=target)).steps == []
        return
    with pytest.raises(ApplicationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        activities.plan(MigrationPlanRequest(service="billing", target=target))
    assert tracking(dsn, "golang-migrate") == [(3, False)]


async def test_target_above_current_and_missing_down_file(migrated, tmp_path):
    dsn, versions, config = migrated("golang-migrate")
    activities = MigrationActivities(config)
    with psycopg.connect(dsn) as conn:
        conn.execute("UPDATE schema_migrations SET version = 2")
    with pytest.raises(ApplicationError, match="target 3 is above the current version 2"):
        activities.plan(MigrationPlanRequest(service="billing", target="3"))
    next((tmp_path / "migrations").glob("0002_*.down.sql")).unlink()
    with pytest.raises(ApplicationError, match=r"migration 2 \(add_plan\) has no down script.*nothing was changed"):
        activities.plan(MigrationPlanRequest(service="billing", target="1"))


async def test_prisma_without_down_sql_is_refused_with_the_way_out(migrated, tmp_path):
    dsn, versions, config = migrated("prisma")
    (tmp_path / "migrations" / versions[2] / "down.sql").unlink()
    with pytest.raises(ApplicationError, match="Prisma does not write down migrations.*prisma migrate diff"):
        MigrationActivities(config).plan(MigrationPlanRequest(service="billing", target="-1"))


async def test_unreachable_database_is_a_clear_error(migrated, monkeypatch):
    _, _, config = migrated("plain")
    monkeypatch.setenv("TEST_MIG_DSN", "postgresql://nobody@127.0.0.1:9/none")
    with pytest.raises(ApplicationError, match="unreachable.*nothing was changed"):
        MigrationActivities(config).plan(MigrationPlanRequest(service="billing", target="-1"))


async def test_dropping_a_critical_table_is_refused(migrated):
    dsn, versions, config = migrated("dbmate")
    with pytest.raises(ApplicationError, match="would drop critical table accounts"):
        MigrationActivities(config).plan(MigrationPlanRequest(service="billing", target="0"))


async def test_another_migrator_holding_the_lock_is_waited_for_then_refused(migrated, monkeypatch):
    monkeypatch.setattr(migration_activities, "LOCK_WAIT_SECONDS", 2)
    dsn, versions, config = migrated("golang-migrate")
    step = MigrationStep(version="3", name="bad_release", previous="2", down_file="unused")
    with psycopg.connect(dsn, autocommit=True) as other:  # golang-migrate's own lock id: `migrate` is running
        other.execute("SELECT pg_advisory_lock(%s)", (advisory_lock_id(other.info.dbname, "schema_migrations"),))
        started = time.monotonic()
        with pytest.raises(ApplicationError, match="another migration holds the migration lock"):
            ActivityEnvironment().run(MigrationActivities(config).down_step,
                                      DownStepRequest(service="billing", step=step))
        waited = time.monotonic() - started
    assert 2 <= waited < 5, f"refused after {waited:.1f} s; the wait is 2 s"  # waited, then gave up
    assert tracking(dsn, "golang-migrate") == [(3, False)]
    result = ActivityEnvironment().run(MigrationActivities(config).down_step,
                                       DownStepRequest(service="billing", step=step))
    assert result.version == "2" and not result.already_done
    again = ActivityEnvironment().run(MigrationActivities(config).down_step,  # a retry after the commit
                                      DownStepRequest(service="billing", step=step))
    assert again.already_done and tracking(dsn, "golang-migrate") == [(2, False)]


async def test_cli_status_and_two_rollbacks_at_once(client, task_queue, temporal_address, migrated):
    from tests.test_cli import assert_one_line_error, cli

    dsn, versions, config = migrated("golang-migrate", policy="always")
    run = dict(address=temporal_address, task_queue=task_queue)
    async with running_worker(client, config, task_queue):
        status = await asyncio.to_thread(cli, "migrations", "status", "billing", **run)
        assert status.returncode == 0, status.stderr
        assert "current version 3 (clean)" in status.stdout
        assert [line.split()[-1] for line in status.stdout.splitlines()[1:]] == ["applied"] * 3
        first, second = await asyncio.gather(
            asyncio.to_thread(cli, "migration", "billing", "--to", "1", **run),
            asyncio.to_thread(cli, "migration", "billing", "--to", "2", **run))
        outcomes = sorted([first, second], key=lambda p: p.returncode)
        assert outcomes[0].returncode == 0 and "started migration-rollback-billing" in outcomes[0].stdout
        assert_one_line_error(outcomes[1], 1, "migration-rollback-billing is already running")
        handle = client.get_workflow_handle("migration-rollback-billing", result_type=MigrationRollbackResult)
        await wait_for_phase(handle, "awaiting_approval", timeout=60)
        await handle.execute_update("reject", ApprovalInput(approver="oncall", reason="test"))
        result = await handle.result()
        assert result.outcome == "rejected" and tracking(dsn, "golang-migrate") == [(3, False)]
        assert flag(dsn, "PROCESSING_ENABLED") == "true"  # a rejected rollback starts processing again
        bad = await asyncio.to_thread(cli, "migration", "billing", "--to", "17", "--wait", **run)
        assert bad.returncode == 1 and "FAILED: unknown version '17'" in bad.stdout


async def test_repair_clears_the_dirty_flag_after_approval(client, task_queue, migrated):
    dsn, versions, config = migrated("golang-migrate")
    with psycopg.connect(dsn) as conn:  # what `migrate` leaves after a failed migration
        conn.execute("UPDATE schema_migrations SET version = 3, dirty = true")
    activities = MigrationActivities(config)
    with pytest.raises(ApplicationError, match="dirty.*rollback migrations repair billing"):
        activities.plan(MigrationPlanRequest(service="billing", target="1"))
    async with running_worker(client, config, task_queue):
        handle = await client.start_workflow(
            MigrationRepairWorkflow.run, MigrationRepairInput(service="billing", version="3"),
            id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=MigrationRepairResult)
        await wait_for_phase(handle, "awaiting_approval", timeout=30)
        assert tracking(dsn, "golang-migrate") == [(3, True)]  # nothing before the approval
        await handle.execute_update("approve", ApprovalInput(approver="oncall", reason="schema checked"))
        result = await handle.result()
    assert result.outcome == "repaired" and result.before.dirty and not result.after.dirty
    assert tracking(dsn, "golang-migrate") == [(3, False)]


async def test_http_kill_switch_is_flipped_and_restored_exactly(client, task_queue, migrated, monkeypatch, tmp_path):
    import httpx
    from starlette.applications import Starlette

    monkeypatch.setenv("TEST_FLAG_TOKEN", "s3cret")
    store_config = tmp_path / "flags.yaml"  # the receiver's flag store, served on loopback
    store_config.write_text(f"state_dir: {tmp_path / 'flagstate'}\nflags: {{token_env: TEST_FLAG_TOKEN}}\n")
    server = serve(Starlette(routes=flag_routes(ConfigSource(store_config))))
    url = f"{server.url}/flags/billing/SCHEDULER_ENABLED"
    try:
        assert httpx.get(url).status_code == 404  # not set
        assert httpx.put(url, json={"value": "false"}).status_code == 401  # writes need the token
        dsn, versions, config = migrated("plain", policy="always", kill_switches=[
            {"name": "PROCESSING_ENABLED", "store": "postgres"},
            {"name": "SCHEDULER_ENABLED", "store": "http", "url": f"{server.url}/flags/billing",
             "token_env": "TEST_FLAG_TOKEN", "off_value": "off"}])
        async with running_worker(client, config, task_queue):
            handle = await start(client, task_queue, "-1")
            await wait_for_phase(handle, "awaiting_approval", timeout=60)
            assert httpx.get(url).json()["value"] == "off" and flag(dsn, "PROCESSING_ENABLED") == "false"
            await handle.execute_update("approve", APPROVAL)
            result = await handle.result()
        assert result.outcome == "rolled_back", result.message
        assert result.kill_switches_before == {"PROCESSING_ENABLED": "true", "SCHEDULER_ENABLED": None}
        assert httpx.get(url).status_code == 404  # "not set" again, not "true"
        assert flag(dsn, "PROCESSING_ENABLED") == "true"
    finally:
        server.stop()


def test_alembic_damage_is_read_from_the_sql_its_upgrade_emits(postgres, write_config, monkeypatch, tmp_path, platform):
    """Alembic migrations are Python: the damage check renders each applied upgrade() to SQL with
    Alembic's offline mode and finds the UPDATE without WHERE that erases a column, like in a .sql
    file; the harmless migrations before it are not reported."""
    from tests.e2e.test_incident import MIGRATIONS as WITH_ERASE
    from workflows.models import DamageRequest

    _, dsn = create_database(postgres, "alm")
    directory = tmp_path / "alembic"
    revisions = write_alembic(directory, WITH_ERASE)
    alembic_upgrade(directory, dsn)
    monkeypatch.setenv("TEST_MIG_DSN", dsn)
    config = write_config({"billing": {
        "app": {"provider": "docker", "docker": {"container": "unused"}},
        "health": {"url": f"{platform.url}/health"},
        "database": {"dsn_env": "TEST_MIG_DSN", "migration_tool": "alembic", "migrations_dir": str(directory)}}})
    found = MigrationActivities(config).damage_since(DamageRequest(service="billing", since_version=revisions[2]))
    assert [(d.version, d.statement, d.table, d.column) for d in found] == [
        (revisions[3], "update_all", "accounts", "plan")]
    everything = MigrationActivities(config).damage_since(DamageRequest(service="billing", since_version=None))
    assert {d.version for d in everything} == {revisions[3]}
