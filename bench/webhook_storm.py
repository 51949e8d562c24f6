"""Alert receiver figures against the real dev server and worker (prints numbers, gates nothing).

1. Latency from an alert's POST to the rollback call reaching the (contract) Vercel API, one
   alert at a time over 30 services: p50 and p99, and where the median one's time went.
2. A storm of 1000 Alertmanager alerts in 10 s across 10 services, sent by a load generator in
   its own process (so it does not share the receiver's interpreter), retrying a 5xx as
   Alertmanager does; the worker runs in its own process too, as deployed: workflows started
   (should be 10), alerts lost (should be 0: every alert is counted by a workflow, read
   through Temporal queries), alerts never accepted, p50 and p99 of the receiver's answer.
   `--per-second` adds p50/p99 per second of the storm.

    .venv/bin/python bench/webhook_storm.py [--storm-only | --latency-only] [--per-second]
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import uvicorn
import yaml
from temporalio.testing import WorkflowEnvironment

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from activities.common import ConfigSource  # noqa: E402
from bench.common import critical_path, peak_rss_mb, polling, report, start_workers, stop, worker_env  # noqa: E402
from starter import engines  # noqa: E402
from starter.webhook import create_app  # noqa: E402
from worker.codec import data_converter  # noqa: E402
from workflows.base import SEARCH_ATTRIBUTES  # noqa: E402
from workflows.models import RollbackStatus  # noqa: E402

TOKEN = "bench-token"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def vercel_in_own_process(names: list[str]) -> tuple[subprocess.Popen, str]:
    """The Vercel contract server (one project per name) in its own process: in ours it would
    compete with the receiver for the GIL, and the benchmark would measure itself."""
    port = engines.free_port()
    process = subprocess.Popen([sys.executable, "-m", "tests.contract.vercel", str(port), *names],
                               cwd=Path(__file__).resolve().parent.parent)
    engines.wait_for(lambda: engines.port_open("127.0.0.1", port), 30, "Vercel contract server", process)
    return process, f"http://127.0.0.1:{port}"


def vercel_services(url: str, names: list[str], approval: str) -> dict:
    services = {}
    for name in names:
        project = f"prj_{name}"
        services[name] = {
            "app": {"provider": "vercel", "vercel": {"project": project, "token_env": "BENCH_VERCEL_TOKEN",
                                                     "api_url": url, "poll_interval_seconds": 1}},
            "health": {"url": f"{url}/_site/{project}/health", "version_url": f"{url}/_site/{project}/version",
                       "consecutive_checks": 1, "interval_seconds": 1, "timeout_seconds": 5},
            "policy": {"app_approval": approval, "watch_after_rollback": "PT0S"},
        }
    return services


async def run_receiver(env, services: dict, workdir: Path, task_queue: str, source: str = "generic"):
    path = workdir / f"{uuid.uuid4().hex}.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(workdir / "state"), "artifact_dir": str(workdir / "inc"),
                                    "webhooks": {"sources": {source: {"bearer_env": "BENCH_HOOK_TOKEN"}}},
                                    "services": services}))
    config = ConfigSource(path)
    port = engines.free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(env.client, config, task_queue), host="127.0.0.1", port=port,
                                           log_level="warning"))
    server.install_signal_handlers = lambda: None
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    return config, f"http://127.0.0.1:{port}/alerts/{source}", server, task


async def latency(env, workdir: Path) -> None:
    """One alert at a time: each POSTed only after the previous one's rollback call reached Vercel,
    so nothing queues behind anything (the burst is bench/workers_throughput.py's)."""
    names = [f"svc{i:03d}" for i in range(30)]
    fake_process, url_base = vercel_in_own_process(names)
    services = vercel_services(url_base, names, "never")
    queue = f"bench-{uuid.uuid4()}"
    config, url, server, task = await run_receiver(env, services, workdir, queue)
    sent: dict[str, float] = {}
    posted: dict[str, float] = {}
    (worker,) = start_workers(1, config._path, worker_env(env.client, queue))
    try:
        await polling(env.client, queue)
        async with httpx.AsyncClient(timeout=30) as http:
            for name in names:
                sent[name] = time.time()
                answer = await http.post(url, headers={"Authorization": f"Bearer {TOKEN}"},
                                         json={"service": name, "error_rate": 0.3, "fingerprint": name})
                assert answer.status_code == 202, answer.text
                deadline = time.monotonic() + 60
                while name not in posted and time.monotonic() < deadline:
                    # the call's time is the contract server's own record: polling slowly loses no
                    # precision, and polling every 100 ms cost the measured path ~150 ms on 2 cores
                    await asyncio.sleep(1.0)
                    calls = (await http.get(f"{url_base}/__calls", params={"method": "POST"})).json()
                    posted = {c["path"].split("/")[3].removeprefix("prj_"): c["at"] for c in calls
                              if c["method"] == "POST" and "/rollback/" in c["path"]}
    finally:
        stop([worker])
    server.should_exit = True
    await task
    fake_process.terminate()
    delays = [(posted[n] - sent[n]) * 1000 for n in names if n in posted]
    print(f"alert -> rollback call reached Vercel, one at a time, {len(delays)}/{len(names)} services: "
          f"p50 {statistics.median(delays):.0f} ms, p99 {percentile(delays, 0.99):.0f} ms")
    first = []  # alert -> the worker begins the run (its first workflow task starts: the first step follows)
    for name in names:
        async for event in env.client.get_workflow_handle(f"app-rollback-{name}").fetch_history_events():
            if event.HasField("workflow_task_started_event_attributes"):
                first.append((event.event_time.ToDatetime().timestamp() - sent[name]) * 1000)
                break
    print(f"alert -> the worker begins the run's first step, one at a time: p50 {statistics.median(first):.0f} ms, "
          f"p99 {percentile(first, 0.99):.0f} ms")
    ordered = sorted(names, key=lambda n: posted.get(n, 0) - sent[n])
    for which, name in (("median", ordered[len(names) // 2]), ("slowest", ordered[-1])):
        print(f"where the {which} one's time went ({(posted[name] - sent[name]) * 1000:.0f} ms; workflow "
              f"app-rollback-{name}, ms after its start):")
        for line in await critical_path(env.client, f"app-rollback-{name}", "vercel.execute"):
            print("   " + line)
    report("alert -> Vercel rollback POST (sequential)", {"alerts": len(delays), "p50_ms": round(statistics.median(delays)),
                                                         "p99_ms": round(percentile(delays, 0.99)),
                                                         "first_step_p50_ms": round(statistics.median(first)),
                                                         "first_step_p99_ms": round(percentile(first, 0.99))})


def alertmanager_alert(service: str, number: int) -> dict:
    """One firing alert as Alertmanager posts it: its own fingerprint, so each is a new occurrence."""
    labels = {"alertname": "HighErrorRate", "service": service, "severity": "critical", "instance": f"i{number}"}
    return {"version": "4", "groupKey": f'{{}}:{{alertname="HighErrorRate", service="{service}"}}',
            "truncatedAlerts": 0, "status": "firing", "receiver": "rollback",
            "groupLabels": {"alertname": "HighErrorRate"}, "commonLabels": labels, "commonAnnotations": {},
            "externalURL": "http://127.0.0.1:9093",
            "alerts": [{"status": "firing", "labels": labels,
                        "annotations": {"summary": "5xx above 5 %", "value": "0.3"},
                        "startsAt": "2026-11-25T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                        "generatorURL": "http://127.0.0.1:9090/graph", "fingerprint": f"{number:016x}"}]}


def generate_load(url: str, names: list[str], total: int, seconds: float, results) -> None:
    """The load generator, in its own process: `total` alerts evenly over `seconds`, each retried
    on a 5xx as Alertmanager does; puts the answer times (ms, first attempt), the retries and the
    alerts never accepted on `results`."""
    timings: list[float] = []
    sent_at: list[float] = []
    retried: dict[str, int] = {}
    failures = 0

    async def one(i: int, http: httpx.AsyncClient) -> None:
        nonlocal failures
        body = json.dumps(alertmanager_alert(names[i % len(names)], i)).encode()
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        started = time.monotonic()
        for attempt in range(4):
            try:
                answer = await http.post(url, content=body, headers=headers)
                outcome = str(answer.status_code)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            if attempt == 0:
                timings.append((time.monotonic() - started) * 1000)
                sent_at.append(started)
            if outcome == "202":
                return
            retried[outcome] = retried.get(outcome, 0) + 1
            await asyncio.sleep(0.5 * 2 ** attempt)
        failures += 1

    async def run() -> None:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(timeout=30, limits=limits) as http:
            pending = []
            begin = time.monotonic()
            for i in range(total):
                pending.append(asyncio.create_task(one(i, http)))
                await asyncio.sleep(max(0.0, begin + (i + 1) * seconds / total - time.monotonic()))
            await asyncio.gather(*pending)
            results.put({"timings": timings, "failures": failures, "elapsed": time.monotonic() - begin,
                         "sent": [t - begin for t in sent_at], "retried": retried})

    asyncio.run(run())


async def storm(env, workdir: Path) -> None:
    names = [f"storm{i}" for i in range(10)]
    fake_process, site_url = vercel_in_own_process(names)
    queue = f"bench-{uuid.uuid4()}"
    config, url, server, task = await run_receiver(env, vercel_services(site_url, names, "always"), workdir,
                                                   queue, source="alertmanager")
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    generator = context.Process(target=generate_load, args=(url, names, 1000, 10.0, results))
    (worker,) = start_workers(1, config._path, worker_env(env.client, queue))
    try:
        await polling(env.client, queue)  # a worker still starting up would compete for the CPU
        generator.start()
        load = await asyncio.to_thread(results.get, True, 120)
        await asyncio.to_thread(generator.join, 30)
        rollbacks = f"TaskQueue = '{queue}' AND WorkflowType = 'AppRollbackWorkflow'"  # not the locks
        started = (await env.client.count_workflows(rollbacks)).count
        sent = len(load["timings"])
        on_timelines = 0
        for _ in range(60):  # alerts for open runs are forwarded in batches: wait for the last batch
            on_timelines = 0
            async for execution in env.client.list_workflows(f"{rollbacks} AND ExecutionStatus = 'Running'"):
                status = await env.client.get_workflow_handle(execution.id).query(
                    "status", result_type=RollbackStatus)
                on_timelines += status.alerts_received  # every alert the run counted, per fingerprint
            if on_timelines >= sent:
                break
            await asyncio.sleep(0.5)
        async for execution in env.client.list_workflows(f"{rollbacks} AND ExecutionStatus = 'Running'"):
            await env.client.get_workflow_handle(execution.id).terminate("bench over")
        worker_rss = peak_rss_mb(worker.pid)
    finally:
        stop([worker])
    server.should_exit = True
    await task
    fake_process.terminate()
    timings = load["timings"]
    if "--per-second" in sys.argv:
        for second in range(11):
            bucket = [ms for ms, at in zip(timings, load["sent"]) if second <= at < second + 1]
            if bucket:
                print(f"  second {second}: {len(bucket)} alerts, p50 {statistics.median(bucket):.1f} ms, "
                      f"p99 {percentile(bucket, 0.99):.1f} ms, max {max(bucket):.1f} ms")
    print(f"storm: {len(timings)} alerts in {load['elapsed']:.1f} s across {len(names)} services "
          f"(load generator in its own process): workflows started {started}, "
          f"alerts lost {len(timings) - on_timelines} ({on_timelines} counted by the workflows), "
          f"never accepted {load['failures']} (retried: {load['retried'] or 'none'}), "
          f"receiver answer p50 {statistics.median(timings):.1f} ms, "
          f"p99 {percentile(timings, 0.99):.1f} ms; peak RSS receiver {peak_rss_mb():.0f} MB, worker {worker_rss:.0f} MB")
    report("alert storm receiver answer", {"alerts": len(timings), "workflows": started,
                                           "lost": len(timings) - on_timelines, "p50_ms": round(statistics.median(timings), 1),
                                           "p99_ms": round(percentile(timings, 0.99), 1),
                                           "receiver_peak_rss_mb": round(peak_rss_mb(), 1),
                                           "worker_peak_rss_mb": round(worker_rss, 1)})


async def main() -> None:
    os.environ.update(BENCH_VERCEL_TOKEN="benchVercelToken", BENCH_HOOK_TOKEN=TOKEN)
    workdir = Path(tempfile.mkdtemp(prefix="rbbench-"))
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=engines.temporal_binary(),
                                                search_attributes=SEARCH_ATTRIBUTES,
                                                data_converter=data_converter(), dev_server_log_level="error")
    try:
        if "--storm-only" not in sys.argv:
            await latency(env, workdir)
        if "--latency-only" not in sys.argv:
            await storm(env, workdir)
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
    # a process that ran a worker can abort in interpreter teardown (PyGILState_Release)
    sys.stdout.flush()
    os._exit(0)
