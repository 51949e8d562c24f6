"""Backup and restore on a real PostgreSQL: verified archives, restore into a new database,
approval, and a swap by rename that keeps the old database."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import psycopg
import pytest
from temporalio.client import WorkflowFailureError

from tests.conftest import running_worker
from tests.helpers import create_database, kinds, set_postgres_flag, shop_service, wait_for_phase
from workflows import BackupWorkflow, DatabaseRestoreWorkflow
from workflows.models import ApprovalInput, BackupInput, BackupManifest, RestoreInput, RestoreResult

pytestmark = pytest.mark.postgres


@pytest.fixture
def shop_db(postgres, write_config, monkeypatch, tmp_path, platform):
    name, dsn = create_database(postgres, "shop")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL)")
        conn.execute("INSERT INTO users SELECT g, 'user ' || g FROM generate_series(1, 100) g")
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, user_id int REFERENCES users, total numeric, "
                     "created_at timestamptz NOT NULL DEFAULT now())")
        conn.execute("INSERT INTO orders SELECT g, 1 + g % 100, g * 1.5 FROM generate_series(1, 50) g")
    set_postgres_flag(dsn, "MAINTENANCE_MODE", "off")
    monkeypatch.setenv("TEST_SHOP_DSN", dsn)
    config = write_config({"shop": shop_service(platform, tmp_path / "backups")})
    return name, dsn, postgres, config


def flag(dsn: str) -> str | None:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT value FROM rollback_flags WHERE name = 'MAINTENANCE_MODE'").fetchone()[0]


def databases(admin_dsn: str, prefix: str) -> set[str]:
    with psycopg.connect(admin_dsn) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (prefix + "%",))}


def count(dsn: str, table: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


async def backup(client, task_queue, config) -> BackupManifest:
    async with running_worker(client, config, task_queue):
        return await client.execute_workflow(BackupWorkflow.run, BackupInput(service="shop"), id=f"wf-{uuid.uuid4()}",
                                             task_queue=task_queue, result_type=BackupManifest)


async def test_backup_damage_restore_keeps_the_old_database(client, task_queue, shop_db):
    name, dsn, admin, config = shop_db
    manifest = await backup(client, task_queue, config)
    assert manifest.verified and manifest.tables == {"public.users": 100, "public.orders": 50,
                                                     "public.rollback_flags": 1}
    assert Path(manifest.archive).stat().st_size == manifest.size_bytes

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO orders (id, user_id, total) SELECT g, 1, 9.99 FROM generate_series(1001, 1005) g")
        conn.execute("DELETE FROM orders WHERE id BETWEEN 21 AND 50")  # the incident
        conn.execute("DELETE FROM users WHERE id > 70 AND id NOT IN (SELECT user_id FROM orders)")
    damaged_users = count(dsn, "users")

    held = psycopg.connect(dsn)  # an app session that stays open through the swap
    async with running_worker(client, config, task_queue):
        handle = await client.start_workflow(
            DatabaseRestoreWorkflow.run, RestoreInput(service="shop", source=manifest.backup_id),
            id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=RestoreResult)
        status = await wait_for_phase(handle, "awaiting_approval", timeout=60)
        assert "public.orders" in status.timeline[-1].message  # the approval shows what the swap changes
        assert "rows newer than the backup (exported): {'public.orders': 5}" in status.timeline[-1].message
        assert count(dsn, "orders") == 25  # nothing swapped before approval
        await handle.execute_update(DatabaseRestoreWorkflow.approve, ApprovalInput(approver="dba", reason="restore"))
        result = await handle.result()

    assert result.outcome == "restored"
    assert (count(dsn, "users"), count(dsn, "orders")) == (100, 50)
    assert result.kill_switches_before == {"MAINTENANCE_MODE": "off"} and flag(dsn) == "off"
    assert [k for k in kinds(result.timeline) if k in ("executing", "rolled_back", "verified")][-4:] == [
        "executing", "rolled_back", "verified", "executing"]  # switches on, swap, app healthy, switches back
    old_dsn = dsn.rsplit("/", 1)[0] + f"/{result.kept_old_as}"
    assert (count(old_dsn, "users"), count(old_dsn, "orders")) == (damaged_users, 25)  # kept, not dropped
    assert result.safety_backup.tables["public.orders"] == 25
    assert result.recent_rows == {"public.orders": 5}
    exported = (Path(result.artifact_dir) / "recent-rows" / "public.orders.csv").read_text().splitlines()
    assert exported[0].startswith("id,user_id,total,created_at") and len(exported) == 6
    assert result.swap_downtime_seconds is not None and result.swap_downtime_seconds < 10
    with pytest.raises(psycopg.OperationalError):
        held.execute("SELECT 1")  # its session was terminated for the swap
    assert databases(admin, f"{name}_restore_") == set()  # renamed into place, no strays


async def test_unhealthy_app_after_the_swap_keeps_processing_stopped(client, task_queue, shop_db, platform):
    name, dsn, admin, config = shop_db
    manifest = await backup(client, task_queue, config)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM orders")
    platform.broken_deploys = {0}  # the app's /health answers 503 from now on
    async with running_worker(client, config, task_queue):
        handle = await client.start_workflow(
            DatabaseRestoreWorkflow.run, RestoreInput(service="shop", source=manifest.backup_id),
            id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=RestoreResult)
        await wait_for_phase(handle, "awaiting_approval", timeout=60)
        await handle.execute_update(DatabaseRestoreWorkflow.approve, ApprovalInput(approver="dba", reason="restore"))
        result = await handle.result()
    assert result.outcome == "failed" and "the app is unhealthy" in result.message
    assert count(dsn, "orders") == 50  # the swap happened
    assert flag(dsn) == "on" and not result.kill_switches_restored  # maintenance mode stays on
    assert result.kept_old_as in result.message


async def test_corrupt_archives_are_refused_before_anything_changes(client, task_queue, shop_db):
    name, dsn, admin, config = shop_db
    manifest = await backup(client, task_queue, config)
    archive = Path(manifest.archive)
    original = archive.read_bytes()
    for damaged in (original[: len(original) // 2], original[:100] + bytes([original[100] ^ 0xFF]) + original[101:]):
        archive.write_bytes(damaged)
        async with running_worker(client, config, task_queue):
            with pytest.raises(WorkflowFailureError) as failure:
                await client.execute_workflow(
                    DatabaseRestoreWorkflow.run, RestoreInput(service="shop", source=manifest.backup_id),
                    id=f"wf-{uuid.uuid4()}", task_queue=task_queue)
        assert "is corrupt" in str(failure.value.cause.cause) and "nothing was changed" in str(failure.value.cause.cause)
    assert databases(admin, f"{name}_") == set()  # no restore database, no renamed live one
    assert count(dsn, "users") == 100


async def test_unknown_source_and_dry_run(client, task_queue, shop_db):
    name, dsn, admin, config = shop_db
    manifest = await backup(client, task_queue, config)
    async with running_worker(client, config, task_queue):
        with pytest.raises(WorkflowFailureError) as failure:
            await client.execute_workflow(DatabaseRestoreWorkflow.run, RestoreInput(service="shop", source="nope"),
                                          id=f"wf-{uuid.uuid4()}", task_queue=task_queue)
        assert "only archives this system wrote" in str(failure.value.cause.cause)
        dry = await client.execute_workflow(
            DatabaseRestoreWorkflow.run, RestoreInput(service="shop", source=manifest.backup_id, dry_run=True),
            id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=RestoreResult)
    assert dry.outcome == "dry_run" and databases(admin, f"{name}_") == set()


async def test_cli_backup_list_and_dry_run_restore(client, task_queue, temporal_address, shop_db):
    import asyncio
    import json

    from tests.test_cli import cli

    name, dsn, admin, config = shop_db
    env = {"TEST_SHOP_DSN": dsn}
    async with running_worker(client, config, task_queue):
        made = await asyncio.to_thread(cli, "backup", "shop", "--wait", address=temporal_address,
                                       task_queue=task_queue, extra_env=env)
        assert made.returncode == 0, made.stderr
        assert "backup shop-" in made.stdout and "full read OK" in made.stdout
        ending = made.stdout.strip().splitlines()[-1]  # one readable line, not raw JSON
        assert ending.startswith("VERIFIED: backup shop-") and " 3 tables, 151 rows, sha256 " in ending, ending
        listed = await asyncio.to_thread(cli, "backups", "list", "shop", "--config", str(config._path), "--json",
                                         extra_env=env)
        (backup_row,) = json.loads(listed.stdout)
        assert backup_row["verified"] and backup_row["tables"]["public.orders"] == 50
        dry = await asyncio.to_thread(cli, "restore", "shop", "--from", backup_row["backup_id"], "--dry-run",
                                      "--wait", address=temporal_address, task_queue=task_queue, extra_env=env)
    assert dry.returncode == 0, dry.stderr
    assert "DRY_RUN" in dry.stdout and databases(admin, f"{name}_") == set()


async def test_swap_failing_half_way_leaves_the_original_in_place(shop_db):
    from temporalio.exceptions import ApplicationError
    from temporalio.testing import ActivityEnvironment

    from activities.postgres import RestoreActivities
    from workflows.models import SwapRequest

    name, dsn, admin, config = shop_db
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}_new"')
        conn.execute(f'CREATE DATABASE "{name}_old"')  # the name the live one would move to is taken
    swap = SwapRequest(service="shop", new_database=f"{name}_new", keep_old_as=f"{name}_old")
    with pytest.raises(ApplicationError) as failure:
        await ActivityEnvironment().run(RestoreActivities(config).swap, swap)
    assert failure.value.non_retryable and "is unchanged and accepts connections again" in str(failure.value)
    assert count(dsn, "users") == 100  # same name, same data, and it accepts connections again
    assert databases(admin, f"{name}_") == {f"{name}_new", f"{name}_old"}


async def test_a_swap_retried_after_a_crash_lets_connections_into_the_kept_database(shop_db):
    """The worker died after the renames and before it allowed connections again: the retry finds
    the swap done and must still open the kept database, or nobody can inspect or dump it."""
    from temporalio.testing import ActivityEnvironment

    from activities.postgres import RestoreActivities
    from workflows.models import SwapRequest

    name, dsn, admin, config = shop_db
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}_new"')
    swap = SwapRequest(service="shop", new_database=f"{name}_new", keep_old_as=f"{name}_old")
    await ActivityEnvironment().run(RestoreActivities(config).swap, swap)
    with psycopg.connect(admin, autocommit=True) as conn:  # as the crashed attempt left it
        conn.execute(f'ALTER DATABASE "{name}_old" WITH ALLOW_CONNECTIONS false')
    again = await ActivityEnvironment().run(RestoreActivities(config).swap, swap)
    assert again.kept_old_as == f"{name}_old"
    assert count(dsn.rsplit("/", 1)[0] + f"/{name}_old", "users") == 100  # it accepts connections


async def test_retention_never_deletes_the_newest_verified_backup(shop_db):
    import json
    from datetime import datetime, timedelta, timezone

    from temporalio.testing import ActivityEnvironment

    from activities.backups import BackupActivities
    from workflows.models import BackupRequest, ServiceRef

    name, dsn, admin, config = shop_db
    raw = config._path.read_text().replace("backup_dir:", "keep_backups: 1\n      keep_backups_for: PT1S\n      backup_dir:")
    config._path.write_text(raw)
    activities = BackupActivities(config)
    environment = ActivityEnvironment()
    for i in range(3):
        manifest = await environment.run(activities.dump, BackupRequest(service="shop", backup_id=f"b{i}"))
        path = activities.manifest_path("shop", manifest.backup_id)
        document = json.loads(path.read_text())
        document["created_at"] = (datetime.now(timezone.utc) - timedelta(days=3 - i)).isoformat()
        document["verified"] = i < 2  # the newest one never finished verification
        path.write_text(json.dumps(document))
    deleted = await environment.run(activities.prune, ServiceRef(service="shop"))
    kept = {m.backup_id for m in await environment.run(activities.list, ServiceRef(service="shop"))}
    assert deleted == ["b0"] and kept == {"b2", "b1"}  # b1: the newest *verified*, kept past the limits
    assert not Path(manifest.archive).with_name("b0.dump").exists()


async def test_restore_heartbeats_toc_progress(client, task_queue, shop_db, monkeypatch):
    from temporalio.testing import ActivityEnvironment

    from activities import backups
    from activities.postgres import RestoreActivities
    from workflows.models import RestoreIntoRequest

    name, dsn, admin, config = shop_db
    manifest = await backup(client, task_queue, config)
    monkeypatch.setattr(backups, "HEARTBEAT_SECONDS", 0.01)  # heartbeat as often as the test can see
    beats = []
    environment = ActivityEnvironment()
    environment.on_heartbeat = lambda *details: beats.append(details[0])
    counts = await environment.run(RestoreActivities(config).restore_into, RestoreIntoRequest(
        service="shop", archive=manifest.archive, database=f"{name}_restore_progress", label="test"))
    assert counts == manifest.tables
    totals = {b["toc_items"] for b in beats}
    assert len(totals) == 1 and totals.pop() >= 9  # 3 tables, their data, keys and constraints
    done = [b["toc_items_done"] for b in beats]
    assert done == sorted(done) and done[-1] > 0
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}_restore_progress"')


async def test_cleanup_drops_only_old_kept_databases_after_approval(client, task_queue, temporal_address, shop_db):
    from datetime import datetime, timezone

    from tests.test_cli import cli
    from workflows import RestoreCleanupWorkflow
    from workflows.models import CleanupInput, CleanupResult

    name, dsn, admin, config = shop_db
    now = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    old, young, leftover, unrelated = (f"{name}_before_restore_20200101000000", f"{name}_before_restore_{now}",
                                       f"{name}_restore_20200102000000", f"{name}_before_restore_notastamp")
    with psycopg.connect(admin, autocommit=True) as conn:
        for database in (old, young, leftover, unrelated):
            conn.execute(f'CREATE DATABASE "{database}"')
    async with running_worker(client, config, task_queue):
        dry = await asyncio.to_thread(cli, "restore", "cleanup", "shop", "--dry-run", "--wait",
                                      address=temporal_address, task_queue=task_queue)
        assert dry.returncode == 0 and old in dry.stdout and leftover in dry.stdout and young not in dry.stdout
        handle = await client.start_workflow(RestoreCleanupWorkflow.run, CleanupInput(service="shop"),
                                             id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=CleanupResult)
        await wait_for_phase(handle, "awaiting_approval", timeout=30)
        assert databases(admin, f"{name}_") == {old, young, leftover, unrelated}  # nothing before approval
        await handle.execute_update("approve", ApprovalInput(approver="dba", reason="past retention"))
        result = await handle.result()
    assert result.outcome == "cleaned" and sorted(result.dropped) == sorted([old, leftover])
    assert databases(admin, f"{name}_") == {young, unrelated}
    assert count(dsn, "orders") == 50  # the live database is untouched


async def test_latest_before_picks_the_newest_backup_before_the_time(client, task_queue, shop_db):
    from datetime import timedelta, timezone

    from temporalio.exceptions import ApplicationError

    from activities.backups import BackupActivities
    from workflows.models import ArchiveRequest

    name, dsn, admin, config = shop_db
    first = await backup(client, task_queue, config)
    second = await backup(client, task_queue, config)
    activities = BackupActivities(config)
    # as psql prints a timestamptz, pasted as is
    at = f"{(second.created_at - timedelta(microseconds=1)).astimezone(timezone.utc):%Y-%m-%d %H:%M:%S.%f}+00"
    chosen = await activities.validate(ArchiveRequest(service="shop", archive=f"latest-before:{at}"))
    assert chosen.backup_id == first.backup_id
    chosen = await activities.validate(ArchiveRequest(service="shop", archive="latest-before:2999-01-01T00:00:00Z"))
    assert chosen.backup_id == second.backup_id
    with pytest.raises(ApplicationError, match="no verified backup of shop was taken before 2000"):
        await activities.validate(ArchiveRequest(service="shop", archive="latest-before:2000-01-01T00:00:00Z"))
    with pytest.raises(ApplicationError, match="latest-before needs a time: 'yesterday' is not an ISO 8601 time"):
        await activities.validate(ArchiveRequest(service="shop", archive="latest-before:yesterday"))


async def test_reimport_puts_newer_rows_back_and_skips_conflicts(client, task_queue, shop_db):
    name, dsn, admin, config = shop_db
    manifest = await backup(client, task_queue, config)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO orders (id, user_id, total) SELECT g, 1, 9.99 FROM generate_series(1001, 1005) g")
        conn.execute("UPDATE orders SET created_at = now() WHERE id = 7")  # newer, but its key is in the backup
        conn.execute("DELETE FROM users WHERE id NOT IN (SELECT user_id FROM orders)")  # the incident
    async with running_worker(client, config, task_queue):
        handle = await client.start_workflow(
            DatabaseRestoreWorkflow.run, RestoreInput(service="shop", source=manifest.backup_id, reimport_recent=True),
            id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=RestoreResult)
        await wait_for_phase(handle, "awaiting_approval", timeout=60)
        await handle.execute_update("approve", ApprovalInput(approver="dba", reason="restore"))
        result = await handle.result()
    assert result.outcome == "restored", result.message
    assert result.recent_rows == {"public.orders": 6}
    assert result.reimported == {"public.orders": {"imported": 5, "rejected": 1, "reason": "key already present"}}
    assert (count(dsn, "users"), count(dsn, "orders")) == (100, 55)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM orders WHERE id BETWEEN 1001 AND 1005").fetchone()[0] == 5


async def test_directory_format_backup_with_jobs(client, task_queue, shop_db, tmp_path):
    import yaml
    from temporalio.exceptions import ApplicationError

    from activities.backups import BackupActivities
    from activities.common import ConfigSource
    from workflows.models import ArchiveRequest

    name, dsn, admin, config = shop_db
    settings = yaml.safe_load(Path(config._path).read_text())
    settings["services"]["shop"]["database"].update(dump_format="directory", dump_jobs=2)
    path = tmp_path / "directory.yaml"
    path.write_text(yaml.safe_dump(settings))
    config = ConfigSource(path)
    manifest = await backup(client, task_queue, config)
    assert manifest.format == "directory" and Path(manifest.archive).is_dir()
    assert manifest.size_bytes == sum(f.stat().st_size for f in Path(manifest.archive).iterdir())
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM orders")
    async with running_worker(client, config, task_queue):
        handle = await client.start_workflow(
            DatabaseRestoreWorkflow.run, RestoreInput(service="shop", source=manifest.backup_id),
            id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=RestoreResult)
        await wait_for_phase(handle, "awaiting_approval", timeout=60)
        await handle.execute_update("approve", ApprovalInput(approver="dba", reason="restore"))
        assert (await handle.result()).outcome == "restored"
    assert count(dsn, "orders") == 50
    data_file = max(Path(manifest.archive).glob("*.dat.gz"), key=lambda f: f.stat().st_size)
    raw = bytearray(data_file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data_file.write_bytes(bytes(raw))
    with pytest.raises(ApplicationError, match="is corrupt: sha256"):
        await BackupActivities(config).validate(ArchiveRequest(service="shop", archive=manifest.backup_id))


async def test_a_restored_database_failing_its_checks_is_never_swapped_in(client, task_queue, shop_db, tmp_path):
    import yaml
    from temporalio.client import WorkflowFailureError

    from activities.common import ConfigSource

    name, dsn, admin, config = shop_db
    manifest = await backup(client, task_queue, config)
    settings = yaml.safe_load(Path(config._path).read_text())
    settings["services"]["shop"]["database"].update(critical_tables=["users", "payments"],
                                                    verify_sql=["SELECT count(*) > 1000 FROM orders"])
    path = tmp_path / "checked.yaml"
    path.write_text(yaml.safe_dump(settings))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM orders WHERE id > 40")
    async with running_worker(client, ConfigSource(path), task_queue):
        with pytest.raises(WorkflowFailureError) as failure:
            await client.execute_workflow(
                DatabaseRestoreWorkflow.run, RestoreInput(service="shop", source=manifest.backup_id),
                id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=RestoreResult)
    message = str(failure.value.cause)
    assert "critical table payments is missing" in message and "returned False" in message
    assert "the live database was not touched" in message and count(dsn, "orders") == 40
