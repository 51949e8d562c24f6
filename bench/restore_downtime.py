"""Restore downtime: DatabaseRestoreWorkflow (restore aside, swap by rename) vs the runbooks'
in-place `pg_restore --clean` on the live database, on pgbench tables (figures, not a test).

Prints (a) app-visible downtime of our restore (the swap), (b) downtime of the in-place
restore, and (c) our restore's total time over a bare `pg_restore -j 2` of the same archive.

    .venv/bin/python bench/restore_downtime.py [--scale 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import yaml
from temporalio.testing import WorkflowEnvironment

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from activities.common import ConfigSource  # noqa: E402
from bench.common import Prober, critical_path, report  # noqa: E402
from starter import engines  # noqa: E402
from worker.codec import data_converter  # noqa: E402
from worker.main import build_worker  # noqa: E402
from workflows import BackupWorkflow, DatabaseRestoreWorkflow  # noqa: E402
from workflows.base import SEARCH_ATTRIBUTES  # noqa: E402
from workflows.models import ApprovalInput, BackupInput, BackupManifest, RestoreInput, RestoreResult  # noqa: E402

BIN = Path("/usr/lib/postgresql/15/bin")


def database_prober(dsn: str) -> Prober:
    """What the app sees: a fresh connection and a lookup every 10 ms. An error, an answer that
    is wrong (the account row missing, as while an in-place restore reloads the table) or a
    lookup blocked for more than 250 ms (the app's request timeout) counts as down."""

    def probe() -> bool:
        with psycopg.connect(dsn, connect_timeout=2, options="-c statement_timeout=250") as conn:
            row = conn.execute("SELECT count(*) FROM pgbench_accounts WHERE aid = 12345").fetchone()
        return row[0] == 1

    return Prober(probe)


def healthy_endpoint() -> str:
    """A stand-in app whose health check always passes, on a loopback port."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Healthy(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"status": "ok"}')

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Healthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}/health"


def timed(args: list[str], env: dict) -> float:
    started = time.monotonic()
    subprocess.run(args, env=env, check=True, capture_output=True)
    return time.monotonic() - started


async def main(scale: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="rbbench-", dir="/tmp"))
    work.chmod(0o755)  # the cluster runs as the postgres user, which must reach its directory
    cluster = engines.start_postgres(work / "pg")
    admin = cluster.address
    dsn = admin.rsplit("/", 1)[0] + "/bench"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE DATABASE bench")
    env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": admin.rsplit(":", 1)[1].split("/")[0], "PGUSER": "postgres"}
    print(f"pgbench -i -s {scale} ...", flush=True)
    subprocess.run([str(BIN / "pgbench"), "-i", "-q", "-s", str(scale), "bench"], env=env, check=True, capture_output=True)
    os.environ["BENCH_DSN"] = dsn
    with psycopg.connect(dsn) as conn:
        database_size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    config_path = work / "rollback.yaml"
    health = healthy_endpoint()  # the restore checks the app after the swap
    config_path.write_text(yaml.safe_dump({"state_dir": str(work / "state"), "artifact_dir": str(work / "inc"),
        "services": {"bench": {"app": {"provider": "docker", "docker": {"container": "unused"}},
                               "health": {"url": health, "consecutive_checks": 1, "interval_seconds": 0.1},
                               "database": {"dsn_env": "BENCH_DSN", "backup_dir": str(work / "backups")}}}}))
    temporal = await WorkflowEnvironment.start_local(dev_server_existing_path=engines.temporal_binary(),
                                                     search_attributes=SEARCH_ATTRIBUTES,
                                                     data_converter=data_converter(),
                                                     dev_server_log_level="error")
    queue = f"bench-{uuid.uuid4()}"
    try:
        async with build_worker(temporal.client, ConfigSource(config_path), queue):
            manifest = await temporal.client.execute_workflow(
                BackupWorkflow.run, BackupInput(service="bench"), id=f"b-{uuid.uuid4()}", task_queue=queue,
                result_type=BackupManifest)
            size_mb = manifest.size_bytes / 1e6
            database_mb = sum(manifest.tables.values())
            with database_prober(dsn) as ours:
                started = time.monotonic()
                handle = await temporal.client.start_workflow(
                    DatabaseRestoreWorkflow.run, RestoreInput(service="bench", source=manifest.backup_id),
                    id=f"r-{uuid.uuid4()}", task_queue=queue, result_type=RestoreResult)
                while True:
                    status = await handle.query(DatabaseRestoreWorkflow.status)
                    if status.waiting_for_approval:
                        break
                    await asyncio.sleep(0.05)
                waited_from = time.monotonic()
                await handle.execute_update(DatabaseRestoreWorkflow.approve,
                                            ApprovalInput(approver="bench", reason="bench"))
                waited = time.monotonic() - waited_from
                result = await handle.result()
                total = time.monotonic() - started - waited
            steps = await critical_path(temporal.client, handle.id, "")  # every step, in order
            safety = result.phase_seconds
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE bare")
        bare = timed([str(BIN / "pg_restore"), "-j", "2", "--no-owner", "-d", "bare", manifest.archive], env)
        restore_only = bare  # the same work our restore step does
        # runbook 001's sequence: an emergency pg_dump first, then pg_restore --clean in place
        emergency = timed([str(BIN / "pg_dump"), "-Fc", "-f", str(work / "emergency.dump"), "bench"], env)
        with database_prober(dsn) as theirs:
            in_place = timed([str(BIN / "pg_restore"), "-j", "2", "--clean", "--if-exists", "--no-owner", "-d", "bench",
                              manifest.archive], env)
        runbook = emergency + in_place
    finally:
        await temporal.shutdown()
        cluster.stop()
    print(f"pgbench scale {scale}: database {database_size / 1e6:.0f} MB, archive {size_mb:.0f} MB, {database_mb} rows; "
          f"phases {safety}")
    print(f"where our restore's time went (ms after its start; the approval wait is {waited * 1000:.0f} ms of it):")
    for line in steps:
        print("   " + line)
    print(f"(a) our restore, app-visible downtime (swap):     {ours.downtime() * 1000:8.0f} ms "
          f"(swap step reported {result.swap_downtime_seconds * 1000:.0f} ms)")
    print(f"(b) in-place pg_restore --clean, downtime:        {theirs.downtime() * 1000:8.0f} ms "
          f"(whole run {in_place:.1f} s)")
    print(f"(c) our restore total {total:.1f} s (incl. safety backup) vs bare pg_restore -j 2 {restore_only:.1f} s: "
          f"{total / restore_only:.2f}x")
    print(f"(d) our restore total {total:.1f} s vs runbook 001's sequence (emergency pg_dump {emergency:.1f} s + "
          f"pg_restore --clean {in_place:.1f} s = {runbook:.1f} s): {total / runbook:.2f}x")
    report("database restore", {"scale": scale, "downtime_ms": round(ours.downtime() * 1000),
                                "in_place_downtime_ms": round(theirs.downtime() * 1000), "total_s": round(total, 1),
                                "bare_pg_restore_s": round(restore_only, 1),
                                "ratio_to_bare": round(total / restore_only, 2), "runbook_sequence_s": round(runbook, 1),
                                "ratio_to_runbook": round(total / runbook, 2)})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=20)
    asyncio.run(main(parser.parse_args().scale))
    sys.stdout.flush()
    os._exit(0)  # a process that ran a worker can abort in interpreter teardown
