"""Alert receiver figures against the real dev server and worker (prints numbers, gates nothing).

1. Latency from an alert's POST to the rollback call reaching the (contract) Vercel API, over
   200 alerts to 200 distinct services: p50 and p99.
2. A storm of 1000 alerts in 10 s across 10 services: workflows started (should be 10),
   requests rejected or failed (should be 0), p99 response time of the receiver.

    .venv/bin/python bench/webhook_storm.py
"""

from __future__ import annotations

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
import uvicorn
import yaml
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from activities.common import ConfigSource  # noqa: E402
from starter import engines  # noqa: E402
from starter.webhook import create_app  # noqa: E402
from tests.contract.server import serve  # noqa: E402
from tests.contract.vercel import FakeVercel  # noqa: E402
from worker.main import build_worker  # noqa: E402
from workflows.base import SEARCH_ATTRIBUTES  # noqa: E402

TOKEN = "bench-token"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def vercel_services(fake: FakeVercel | None, url: str, names: list[str], approval: str) -> dict:
    services = {}
    for i, name in enumerate(names):
        project = f"prj_{name}"
        if fake is not None:
            fake.add_project(project, name)
            fake.add_deployment(project, f"dpl_{name}_good", 1_000 + i * 10)
            fake.add_deployment(project, f"dpl_{name}_bad", 2_000 + i * 10)
        services[name] = {
            "app": {"provider": "vercel", "vercel": {"project": project, "token_env": "BENCH_VERCEL_TOKEN",
                                                     "api_url": url, "poll_interval_seconds": 1}},
            "health": {"url": f"{url}/_site/{project}/health", "version_url": f"{url}/_site/{project}/version",
                       "consecutive_checks": 1, "interval_seconds": 1, "timeout_seconds": 5},
            "policy": {"app_approval": approval, "watch_after_rollback": "PT0S"},
        }
    return services


async def run_receiver(env, services: dict, workdir: Path, task_queue: str):
    path = workdir / f"{uuid.uuid4().hex}.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(workdir / "state"), "artifact_dir": str(workdir / "inc"),
                                    "webhooks": {"sources": {"generic": {"bearer_env": "BENCH_HOOK_TOKEN"}}},
                                    "services": services}))
    config = ConfigSource(path)
    port = engines.free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(env.client, config, task_queue), host="127.0.0.1", port=port,
                                           log_level="warning"))
    server.install_signal_handlers = lambda: None
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    return config, f"http://127.0.0.1:{port}/alerts/generic", server, task


async def latency(env, workdir: Path) -> None:
    names = [f"svc{i:03d}" for i in range(200)]
    # The Vercel contract server runs in its own process: in ours it would compete with the
    # worker and receiver for the GIL and measure itself.
    port = engines.free_port()
    fake_process = subprocess.Popen([sys.executable, "-m", "tests.contract.vercel", str(port), *names],
                                    cwd=Path(__file__).resolve().parent.parent)
    url_base = f"http://127.0.0.1:{port}"
    engines.wait_for(lambda: engines.port_open("127.0.0.1", port), 30, "Vercel contract server", fake_process)
    services = vercel_services(None, url_base, names, "never")
    queue = f"bench-{uuid.uuid4()}"
    config, url, server, task = await run_receiver(env, services, workdir, queue)
    sent: dict[str, float] = {}
    posted: dict[str, float] = {}
    async with build_worker(env.client, config, queue), httpx.AsyncClient(timeout=30) as http:
        for name in names:  # 200 alerts over about two seconds
            sent[name] = time.time()
            answer = await http.post(url, headers={"Authorization": f"Bearer {TOKEN}"},
                                     json={"service": name, "error_rate": 0.3, "fingerprint": name})
            assert answer.status_code == 202, answer.text
            await asyncio.sleep(0.01)
        deadline = time.monotonic() + 240
        while len(posted) < len(names) and time.monotonic() < deadline:
            await asyncio.sleep(1)
            calls = (await http.get(f"{url_base}/__calls")).json()
            posted = {c["path"].split("/")[3].removeprefix("prj_"): c["at"] for c in calls
                      if c["method"] == "POST" and "/rollback/" in c["path"]}
    server.should_exit = True
    await task
    fake_process.terminate()
    delays = [(posted[n] - sent[n]) * 1000 for n in names if n in posted]
    print(f"alert -> rollback call reached Vercel, {len(delays)}/{len(names)} services: "
          f"p50 {statistics.median(delays):.0f} ms, p99 {percentile(delays, 0.99):.0f} ms")


async def storm(env, workdir: Path) -> None:
    fake = FakeVercel(token="benchVercelToken")
    site = serve(fake.app())
    names = [f"storm{i}" for i in range(10)]
    queue = f"bench-{uuid.uuid4()}"
    config, url, server, task = await run_receiver(env, vercel_services(fake, site.url, names, "always"), workdir, queue)
    timings: list[float] = []
    failures = 0

    async def one(i: int, http: httpx.AsyncClient) -> None:
        nonlocal failures
        started = time.monotonic()
        try:
            answer = await http.post(url, headers={"Authorization": f"Bearer {TOKEN}"},
                                     json={"service": names[i % 10], "error_rate": 0.3, "fingerprint": f"f{i}"})
            if answer.status_code not in (200, 202):
                failures += 1
        except httpx.HTTPError:
            failures += 1
        timings.append((time.monotonic() - started) * 1000)

    async with build_worker(env.client, config, queue), httpx.AsyncClient(timeout=30) as http:
        pending = []
        begin = time.monotonic()
        for i in range(1000):  # 100 a second for 10 s
            pending.append(asyncio.create_task(one(i, http)))
            await asyncio.sleep(max(0.0, begin + (i + 1) * 0.01 - time.monotonic()))
        await asyncio.gather(*pending)
        elapsed = time.monotonic() - begin
        started = (await env.client.count_workflows(f"TaskQueue = '{queue}'")).count
        async for execution in env.client.list_workflows(f"TaskQueue = '{queue}' AND ExecutionStatus = 'Running'"):
            await env.client.get_workflow_handle(execution.id).terminate("bench over")
    server.should_exit = True
    await task
    site.stop()
    print(f"storm: 1000 alerts in {elapsed:.1f} s across 10 services: workflows started {started}, "
          f"rejected or failed {failures}, receiver p50 {statistics.median(timings):.0f} ms, "
          f"p99 {percentile(timings, 0.99):.0f} ms")


async def main() -> None:
    os.environ.update(BENCH_VERCEL_TOKEN="benchVercelToken", BENCH_HOOK_TOKEN=TOKEN)
    workdir = Path(tempfile.mkdtemp(prefix="rbbench-"))
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=engines.temporal_binary(),
                                                search_attributes=SEARCH_ATTRIBUTES,
                                                data_converter=pydantic_data_converter, dev_server_log_level="error")
    try:
        await latency(env, workdir)
        await storm(env, workdir)
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
    # a process that ran a worker can abort in interpreter teardown (PyGILState_Release)
    sys.stdout.flush()
    os._exit(0)
