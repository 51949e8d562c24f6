"""Point-in-time recovery on a real cluster with WAL archiving: rows inserted before a recorded
time come back, rows inserted after it do not; handed over as a DSN, or swapped in."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import yaml

from activities.common import ConfigSource
from starter import engines
from tests.conftest import running_worker, unavailable
from tests.helpers import wait_for_phase
from tests.test_cli import cli
from workflows import DatabaseRestoreWorkflow
from workflows.models import ApprovalInput, RestoreInput, RestoreResult

pytestmark = pytest.mark.postgres


@pytest.fixture
def archiving(platform, monkeypatch):
    """A cluster whose archive_command copies WAL into an archive directory, a `shop` database on
    it, and a config with PITR set up. Everything lives where the postgres user can reach it."""
    root = Path(tempfile.mkdtemp(prefix="rbpitr-", dir="/tmp"))
    os.chmod(root, 0o755)
    archive, cluster_dir = root / "wal-archive", root / "cluster"
    archive.mkdir()
    if os.geteuid() == 0:
        shutil.chown(archive, "postgres", "postgres")
    try:
        cluster = engines.start_postgres(cluster_dir, settings={
            "archive_mode": "on", "archive_command": f"test ! -f {archive}/%f && cp %p {archive}/%f"})
    except (engines.EngineError, subprocess.CalledProcessError) as exc:
        unavailable(f"PostgreSQL could not start: {exc}")
    with psycopg.connect(cluster.address, autocommit=True) as conn:
        conn.execute("CREATE DATABASE shop")
    dsn = cluster.address.rsplit("/", 1)[0] + "/shop"
    monkeypatch.setenv("TEST_PITR_DSN", dsn)
    config_file = root / "rollback.yaml"
    config_file.write_text(yaml.safe_dump({"state_dir": str(root / "state"), "artifact_dir": str(root / "incidents"),
                                           "services": {"shop": {
        "app": {"provider": "docker", "docker": {"container": "unused"}},
        "health": {"url": f"{platform.url}/health", "consecutive_checks": 1, "interval_seconds": 0.1},
        "database": {"dsn_env": "TEST_PITR_DSN", "backup_dir": str(root / "dumps"),
                     "pitr": {"base_backup_dir": str(root / "base"), "wal_archive_dir": str(archive)}},
    }}}))
    (root / "state").mkdir(mode=0o755)
    yield dsn, cluster.address, ConfigSource(config_file)
    cluster.stop()
    subprocess.run(["pkill", "-f", f"{root}/state/pitr"], capture_output=True)  # a recovered server left running
    shutil.rmtree(root, ignore_errors=True)


def ids(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM orders ORDER BY id")]


def archive_current_wal(admin: str) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        segment = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]

        def archived() -> bool:
            last = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0]
            return last is not None and last >= segment

        deadline = time.monotonic() + 30
        while not archived():
            assert time.monotonic() < deadline, f"WAL segment {segment} was not archived"
            time.sleep(0.2)


async def test_recovery_to_a_point_in_time(client, task_queue, temporal_address, archiving):
    dsn, admin, config = archiving
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now())")
        conn.execute("INSERT INTO orders (id) SELECT generate_series(1, 10)")
    async with running_worker(client, config, task_queue):
        made = await asyncio.to_thread(cli, "backup", "shop", "--base", "--wait", address=temporal_address,
                                       task_queue=task_queue)
        assert made.returncode == 0, made.stdout + made.stderr
        ending = made.stdout.strip().splitlines()[-1]  # one readable line, not raw JSON
        assert ending.startswith("VERIFIED: base backup shop-base-") and "checked by pg_verifybackup" in ending
        base_path = Path(ending.rsplit(" in ", 1)[1])
        assert Path(base_path, "backup_manifest").exists()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET TIME ZONE 'UTC'")
            conn.execute("INSERT INTO orders (id) SELECT generate_series(11, 20)")
            # as psql shows it, pasted as is: `2026-11-25 14:00:00.123456+00`
            target_text = conn.execute("SELECT clock_timestamp()::text").fetchone()[0]
            target = conn.execute("SELECT %s::timestamptz", (target_text,)).fetchone()[0]
            time.sleep(1.1)
            conn.execute("INSERT INTO orders (id) SELECT generate_series(21, 30)")
        archive_current_wal(admin)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM orders WHERE id > 5")  # the incident

        # handed over: a recovered copy on another port, the live database untouched
        handed = await asyncio.to_thread(cli, "restore", "shop", "--pitr", target_text, "--handoff", "--wait",
                                         address=temporal_address, task_queue=task_queue)
        assert handed.returncode == 0, handed.stdout + handed.stderr
        message = next(line for line in handed.stdout.splitlines() if line.startswith("RECOVERED: "))
        recovered_dsn = message.split(": ", 2)[2].split(" (data directory")[0]
        assert "password" not in recovered_dsn
        assert ids(recovered_dsn) == list(range(1, 21))  # exactly the rows before the target time
        assert ids(dsn) == [1, 2, 3, 4, 5]
        data_dir = message.split("data directory ", 1)[1].split(";")[0]
        # the printed stop command works as printed for the user the worker runs as (root here: runuser)
        stop_command, as_user = message.split("stop it with `", 1)[1].split("` as ", 1)
        assert as_user.startswith(pwd.getpwuid(os.geteuid()).pw_name + ")")
        stopped = subprocess.run(stop_command, shell=True, capture_output=True, text=True)
        assert stopped.returncode == 0, stopped.stderr
        assert not (Path(data_dir) / "postmaster.pid").exists()

        # swapped in: recovered, dumped, restored into a new database, approved, swapped
        handle = await client.start_workflow(
            DatabaseRestoreWorkflow.run, RestoreInput(service="shop", source="pitr", target_time=target),
            id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=RestoreResult)
        await wait_for_phase(handle, "awaiting_approval", timeout=120)
        await handle.execute_update("approve", ApprovalInput(approver="dba", reason="back to before the delete"))
        result = await handle.result()
    assert result.outcome == "restored", result.message
    assert ids(dsn) == list(range(1, 21))
    assert result.source.created_at == target  # rows newer than this count as "after the backup"
    old_dsn = dsn.rsplit("/", 1)[0] + f"/{result.kept_old_as}"
    assert ids(old_dsn) == [1, 2, 3, 4, 5]  # the damaged database is kept
    assert not (Path(config.config.state_dir) / "pitr" / handle.result_run_id).exists()  # copy discarded
