"""Throughput with several worker processes on one task queue (prints figures, gates nothing).

1. Rollbacks completed per minute with 1, 2 and 4 `rollback worker` processes: 40 Vercel app
   rollbacks of 40 services started at once, the Vercel contract server in its own process
   answering at once (its rollback job finishes in 0.2 s), the SQLite state store shared through
   one state_dir, or the PostgreSQL one with `--postgres DSN` (as several hosts would).
2. A burst of 10 alerts for 10 services posted at once to a receiver in its own process: p50 and
   p99 from the POST to the rollback call reaching Vercel, with 2 workers.

    .venv/bin/python bench/workers_throughput.py [--rollbacks 40] [--workers 1,2,4] [--postgres DSN]
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

import httpx
import yaml
from temporalio.testing import WorkflowEnvironment

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.webhook_storm import TOKEN, percentile, vercel_in_own_process, vercel_services  # noqa: E402
from bench.common import (ROLLBACK, critical_path, peak_rss_mb, polling, report, start_workers, stop,  # noqa: E402
                          worker_env)
from starter import engines  # noqa: E402
from worker.codec import data_converter  # noqa: E402
from workflows import AppRollbackWorkflow  # noqa: E402
from workflows.base import SEARCH_ATTRIBUTES  # noqa: E402
from workflows.models import AppRollbackInput  # noqa: E402

def write_config(workdir: Path, services: dict, postgres: str | None) -> Path:
    document = {"state_dir": str(workdir / "state"), "artifact_dir": str(workdir / "incidents"),
                "webhooks": {"sources": {"generic": {"bearer_env": "BENCH_HOOK_TOKEN"}}}, "services": services}
    if postgres:
        document["state_dsn_env"] = "BENCH_STATE_DSN"
    path = workdir / f"{uuid.uuid4().hex}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def state_dsn(postgres: str | None) -> dict[str, str]:
    return {"BENCH_STATE_DSN": postgres} if postgres else {}


async def throughput(env, workdir: Path, workers: int, rollbacks: int, postgres: str | None) -> float:
    names = [f"w{workers}s{i:03d}" for i in range(rollbacks)]
    fake, url = vercel_in_own_process(names)
    queue = f"bench-{uuid.uuid4()}"
    config = write_config(workdir, vercel_services(url, names, "never"), postgres)
    processes = start_workers(workers, config, worker_env(env.client, queue, state_dsn(postgres)))
    try:
        await polling(env.client, queue)
        await asyncio.sleep(1)  # the other workers finish starting too
        began = time.monotonic()
        handles = [await env.client.start_workflow(
            AppRollbackWorkflow.run, AppRollbackInput(service=name, reason="bench"), id=f"bench-{uuid.uuid4()}",
            task_queue=queue) for name in names]
        outcomes = await asyncio.gather(*(h.result() for h in handles), return_exceptions=True)
        elapsed = time.monotonic() - began
        rss = [peak_rss_mb(process.pid) for process in processes]
    finally:
        stop(processes)
        fake.terminate()
    failed = sum(1 for o in outcomes if isinstance(o, BaseException))
    per_minute = (rollbacks - failed) / elapsed * 60
    print(f"{workers} worker process(es): {rollbacks - failed}/{rollbacks} rollbacks in {elapsed:.1f} s = "
          f"{per_minute:.0f} per minute; worker peak RSS {max(rss):.0f} MB")
    report(f"rollbacks per minute, {workers} worker(s)", {"rollbacks": rollbacks - failed,
                                                         "seconds": round(elapsed, 1), "per_minute": round(per_minute),
                                                         "worker_peak_rss_mb": round(max(rss))})
    return per_minute


async def burst(env, workdir: Path, postgres: str | None) -> None:
    names = [f"burst{i}" for i in range(10)]
    fake, url = vercel_in_own_process(names)
    queue = f"bench-{uuid.uuid4()}"
    config = write_config(workdir, vercel_services(url, names, "never"), postgres)
    environment = worker_env(env.client, queue, {**state_dsn(postgres), "BENCH_HOOK_TOKEN": TOKEN})
    port = engines.free_port()
    receiver = subprocess.Popen([ROLLBACK, "webhook", "--config", str(config), "--host", "127.0.0.1", "--port",
                                 str(port)], env=environment, stderr=subprocess.DEVNULL)
    processes = start_workers(2, config, environment)
    try:
        engines.wait_for(lambda: engines.port_open("127.0.0.1", port), 30, "receiver", receiver)
        await polling(env.client, queue)
        await asyncio.sleep(1)
        sent: dict[str, float] = {}
        async with httpx.AsyncClient(timeout=30) as http:
            async def one(name: str) -> None:
                sent[name] = time.time()
                answer = await http.post(f"http://127.0.0.1:{port}/alerts/generic",
                                         headers={"Authorization": f"Bearer {TOKEN}"},
                                         json={"service": name, "error_rate": 0.3, "fingerprint": name})
                assert answer.status_code == 202, answer.text

            await asyncio.gather(*(one(name) for name in names))
            posted: dict[str, float] = {}
            deadline = time.monotonic() + 120
            while len(posted) < len(names) and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                calls = (await http.get(f"{url}/__calls", params={"method": "POST"})).json()
                posted = {c["path"].split("/")[3].removeprefix("prj_"): c["at"] for c in calls
                          if c["method"] == "POST" and "/rollback/" in c["path"]}
    finally:
        stop([receiver, *processes])
        fake.terminate()
    delays = [(posted[n] - sent[n]) * 1000 for n in names if n in posted]
    print(f"burst of 10 alerts (10 services at once) -> rollback call reached Vercel, {len(delays)}/10: "
          f"p50 {statistics.median(delays):.0f} ms, p99 {percentile(delays, 0.99):.0f} ms")
    slowest = max(names, key=lambda n: posted.get(n, float("inf")) - sent[n])
    handle = env.client.get_workflow_handle(f"app-rollback-{slowest}")
    began = (await handle.describe()).start_time.timestamp()
    print(f"where the slowest one's time went: its alert reached Temporal as a started run "
          f"{(began - sent[slowest]) * 1000:.0f} ms after it was sent; then (ms after that start):")
    for line in await critical_path(env.client, handle.id, "vercel.execute"):
        print("   " + line)
    report("burst of 10 alerts -> rollback POST", {"alerts": len(delays), "p50_ms": round(statistics.median(delays)),
                                                   "p99_ms": round(percentile(delays, 0.99))})


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rollbacks", type=int, default=40)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--postgres", help="a PostgreSQL DSN for the shared state store")
    args = parser.parse_args()
    os.environ.update(BENCH_VERCEL_TOKEN="benchVercelToken", ROLLBACK_CODEC="off")
    workdir = Path(tempfile.mkdtemp(prefix="rbbench-"))
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=engines.temporal_binary(),
                                                search_attributes=SEARCH_ATTRIBUTES, data_converter=data_converter(),
                                                dev_server_log_level="error")
    print(f"machine: {os.cpu_count()} cores; state store: {'PostgreSQL' if args.postgres else 'SQLite'}")
    try:
        for count in (int(n) for n in args.workers.split(",")):
            await throughput(env, workdir, count, args.rollbacks, args.postgres)
        await burst(env, workdir, args.postgres)
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
    sys.stdout.flush()
    os._exit(0)  # a process that ran a Temporal client can abort in interpreter teardown (PyGILState_Release)
