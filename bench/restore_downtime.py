"""Restore downtime: DatabaseRestoreWorkflow (restore aside, swap by rename) vs the runbooks'
in-place `pg_restore --clean` on the live database, on pgbench tables (figures, not a test).

Prints (a) app-visible downtime of our restore (the swap), (b) downtime of the in-place
restore, (c) our restore's total time over a bare `pg_restore -j 2` of the same archive, (d) over
runbook 001's sequence, and (e) over the floor of any restore that takes a fresh safety dump first:
the bare `pg_dump` and `pg_restore -j 2` side by side, or one after the other, whichever is faster.

    .venv/bin/python bench/restore_downtime.py [--scale 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
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

from bench.common import Prober, critical_path, peak_rss_mb, report, worker_process  # noqa: E402
from starter import engines  # noqa: E402
from worker.codec import data_converter  # noqa: E402
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


def settle(admin: str) -> None:
    """Each measured step starts from the same state: the cluster's dirty pages written out and
    the kernel's flushed. Else a step pays for the writes of the one before it, and on this VM's
    disk that moved a bare pg_restore between 2.8 and 4.8 s."""
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    os.sync()


def side_by_side(*commands: list[str], env: dict, admin: str, dsn: str) -> tuple[float, Prober]:
    """Start the commands together, from a settled cluster, while the app keeps querying the
    live database (as during any restore, ours included); seconds until the last one ends."""
    settle(admin)
    with database_prober(dsn) as probe:
        started = time.monotonic()
        processes = [subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                     for args in commands]
        failed = [process.communicate()[1].decode()[-300:] for process in processes if process.wait()]
        elapsed = time.monotonic() - started
    if failed:
        raise RuntimeError(f"{commands} failed: {failed}")
    return elapsed, probe


async def our_restore(client, queue: str, manifest: BackupManifest, admin: str, dsn: str):
    """One DatabaseRestoreWorkflow from `manifest`, approved as soon as it asks; its time without
    the approval wait, the app's view of it, its result and its workflow id."""
    settle(admin)
    with database_prober(dsn) as probe:
        started = time.monotonic()
        handle = await client.start_workflow(
            DatabaseRestoreWorkflow.run, RestoreInput(service="bench", source=manifest.backup_id),
            id=f"r-{uuid.uuid4()}", task_queue=queue, result_type=RestoreResult)
        # asked twice a second, as `rollback status --follow` would: polling every 50 ms cost the
        # restore ~1 s of the 2 cores (each query is a round trip through the server to the worker)
        while not (await handle.query(DatabaseRestoreWorkflow.status)).waiting_for_approval:
            await asyncio.sleep(0.5)
        await handle.execute_update(DatabaseRestoreWorkflow.approve, ApprovalInput(approver="bench", reason="bench"))
        result = await handle.result()
        # the approval wait, by the workflow's own clock, is a person's time, not the restore's
        total = time.monotonic() - started - result.phase_seconds.get("awaiting_approval", 0)
    return total, probe, result, handle.id


def baselines(archive: str, work: Path, env: dict, admin: str, dsn: str) -> dict[str, float]:
    """The same archive by the runbooks' tools alone, each from a settled cluster."""
    for database in ("bare", "pair", "sequential"):
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database}")
            conn.execute(f"CREATE DATABASE {database}")
    restore = [str(BIN / "pg_restore"), "-j", "2", "--no-owner", archive, "-d"]
    dump = [str(BIN / "pg_dump"), "-Fc", "-f", str(work / "baseline.dump"), "bench"]
    figures = {"bare": side_by_side([*restore, "bare"], env=env, admin=admin, dsn=dsn)[0]}
    # the floor of a restore that takes a fresh safety dump first: the two tools alone, side by
    # side as our restore runs them, and one after the other
    figures["pair"] = side_by_side(dump, [*restore, "pair"], env=env, admin=admin, dsn=dsn)[0]
    figures["sequential"] = (side_by_side(dump, env=env, admin=admin, dsn=dsn)[0]
                             + side_by_side([*restore, "sequential"], env=env, admin=admin, dsn=dsn)[0])
    # runbook 001's sequence: an emergency pg_dump first, then pg_restore --clean in place
    figures["emergency"] = side_by_side(dump, env=env, admin=admin, dsn=dsn)[0]
    figures["in_place"], theirs = side_by_side([*restore[:-1], "--clean", "--if-exists", "-d", "bench"], env=env,
                                               admin=admin, dsn=dsn)
    figures["in_place_downtime"] = theirs.downtime()
    return figures


async def main(scale: int, rounds: int) -> None:
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
    runs: list[dict[str, float]] = []
    try:
        async with worker_process(temporal.client, config_path, queue) as worker:
            manifest = await temporal.client.execute_workflow(
                BackupWorkflow.run, BackupInput(service="bench"), id=f"b-{uuid.uuid4()}", task_queue=queue,
                result_type=BackupManifest)
            for number in range(rounds):  # interleaved, so a slow spell of the machine hits both sides
                total, ours, result, workflow_id = await our_restore(temporal.client, queue, manifest, admin, dsn)
                figures = {"total": total, "downtime": ours.downtime(),
                           **baselines(manifest.archive, work, env, admin, dsn)}
                runs.append(figures)
                print(f"round {number + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()), flush=True)
                with psycopg.connect(admin, autocommit=True) as conn:  # the databases our restore kept
                    for (kept,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'bench_%'"):
                        conn.execute(f"DROP DATABASE {kept}")
            steps = await critical_path(temporal.client, workflow_id, "")  # the last round's steps, in order
            worker_rss = peak_rss_mb(worker.pid)
    finally:
        await temporal.shutdown()
        cluster.stop()
    median = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
    runbook = median["emergency"] + median["in_place"]
    floor = min(median["pair"], median["sequential"])
    print(f"pgbench scale {scale}: database {database_size / 1e6:.0f} MB, archive {manifest.size_bytes / 1e6:.0f} MB, "
          f"{sum(manifest.tables.values())} rows; medians of {rounds} interleaved rounds; the app queries the live "
          "database every 10 ms throughout, and each step starts from a settled cluster")
    print("where the last round's restore went (ms after its start; the approval wait is not counted):")
    for line in steps:
        print("   " + line)
    print(f"worker process peak RSS: {worker_rss:.0f} MB")
    print(f"(a) our restore, app-visible downtime (swap):     {median['downtime'] * 1000:8.0f} ms "
          f"(last swap step reported {result.swap_downtime_seconds * 1000:.0f} ms)")
    print(f"(b) in-place pg_restore --clean, downtime:        {median['in_place_downtime'] * 1000:8.0f} ms "
          f"(whole run {median['in_place']:.1f} s)")
    print(f"(c) our restore total {median['total']:.1f} s (incl. safety backup) vs bare pg_restore -j 2 "
          f"{median['bare']:.1f} s: {median['total'] / median['bare']:.2f}x")
    print(f"(d) our restore total {median['total']:.1f} s vs runbook 001's sequence (emergency pg_dump "
          f"{median['emergency']:.1f} s + pg_restore --clean {median['in_place']:.1f} s = {runbook:.1f} s): "
          f"{median['total'] / runbook:.2f}x")
    print(f"(e) floor, bare pg_dump + pg_restore -j 2 with nothing else: side by side {median['pair']:.1f} s, one "
          f"after the other {median['sequential']:.1f} s; our restore total over the lower: "
          f"{median['total'] / floor:.2f}x")
    report("database restore", {"scale": scale, "rounds": rounds, "downtime_ms": round(median["downtime"] * 1000),
                                "in_place_downtime_ms": round(median["in_place_downtime"] * 1000),
                                "total_s": round(median["total"], 1), "bare_pg_restore_s": round(median["bare"], 1),
                                "ratio_to_bare": round(median["total"] / median["bare"], 2),
                                "runbook_sequence_s": round(runbook, 1),
                                "ratio_to_runbook": round(median["total"] / runbook, 2),
                                "floor_side_by_side_s": round(median["pair"], 1),
                                "floor_one_after_other_s": round(median["sequential"], 1),
                                "ratio_to_floor": round(median["total"] / floor, 2),
                                "worker_peak_rss_mb": round(worker_rss)})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.scale, arguments.rounds))
    sys.stdout.flush()
    os._exit(0)  # a process that ran a worker can abort in interpreter teardown
