"""Downtime of a Docker app rollback: AppRollbackWorkflow vs runbook 004's compose steps.

Polls the demo app every 10 ms during each rollback and prints, side by side, the downtime
(longest run of failed polls) and the time from the start until v1 answers, with the physical
floor measured in the same run (a pre-created container: `docker stop` + `docker start` only)
and where the workflow's time went before the swap. Figures only: nothing here passes or fails
on timing.

    .venv/bin/python bench/app_rollback_downtime.py [--rounds 3]
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

import docker
import httpx
import yaml
from temporalio.testing import WorkflowEnvironment

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Prober, critical_path, peak_rss_mb, report, worker_process  # noqa: E402
from activities.docker import DeployLedger, deploy  # noqa: E402
from activities.state import SqliteStore  # noqa: E402
from starter import engines  # noqa: E402
from worker.codec import data_converter  # noqa: E402
from workflows import AppRollbackWorkflow  # noqa: E402
from workflows.base import SEARCH_ATTRIBUTES  # noqa: E402
from workflows.models import AppRollbackInput, AppRollbackResult  # noqa: E402


PATHS: list[list[str]] = []  # each round's critical path up to docker.execute
WORKER_RSS: list[float] = []  # each round's worker process, peak resident MB


def version_prober(port: int, client: httpx.Client) -> Prober:
    """Poll the demo app's /version every 10 ms; a poll fails unless it answers 200."""
    return Prober(lambda: client.get(f"http://127.0.0.1:{port}/version").status_code == 200)


def wait_for_version(port: int, version: str, timeout: float = 60) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/version", timeout=0.5).text.strip() == version:
                return time.monotonic()
        except httpx.HTTPError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{version} never answered on {port}")


async def workflow_round(env, engine, address: str, workdir: Path) -> tuple[float, float]:
    name, port = f"bench-{uuid.uuid4().hex[:6]}", engines.free_port()
    config_path = workdir / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump({"state_dir": str(workdir / "state"), "artifact_dir": str(workdir / "inc"),
        "services": {"web": {
            "app": {"provider": "docker", "docker": {"container": name, "docker_host": address, "stop_timeout": 10}},
            "health": {"url": f"http://127.0.0.1:{port}/health", "version_url": f"http://127.0.0.1:{port}/version",
                       "consecutive_checks": 1, "interval_seconds": 0.2, "timeout_seconds": 1}}}}))
    ledger = DeployLedger(SqliteStore(workdir / "state" / "state.sqlite"), "web")
    ledger.store.forget(DeployLedger.KIND, ["web"])  # each round starts with a fresh history
    engines.run_demo_container(engine, name, "demo-web:v1", port)
    ledger.record(engine.images.get("demo-web:v1").id, "demo-web:v1")
    deploy(engine, name, "demo-web:v2", ledger)
    wait_for_version(port, "v2")
    queue = f"bench-{uuid.uuid4()}"
    async with worker_process(env.client, config_path, queue) as worker:
        with httpx.Client(timeout=0.5) as http, version_prober(port, http) as poller:
            started = time.monotonic()
            workflow_id = f"bench-{uuid.uuid4()}"
            handle = await env.client.start_workflow(
                AppRollbackWorkflow.run, AppRollbackInput(service="web"), id=workflow_id,
                task_queue=queue, result_type=AppRollbackResult)
            # time to good: the old version answers (the run goes on verifying and reporting)
            total = await asyncio.to_thread(wait_for_version, port, "v1") - started
            result = await handle.result()
        WORKER_RSS.append(peak_rss_mb(worker.pid))
        PATHS.append(await critical_path(env.client, workflow_id, "docker.execute"))
    assert result.outcome == "rolled_back", result.message
    for container in engine.containers.list(all=True, filters={"name": name}):
        container.remove(force=True)
    return poller.downtime(), total


def floor_round(engine, address: str, workdir: Path) -> tuple[float, float]:
    """The physical floor of any swap on one port: v1 already created (not started) beside the
    running v2, then only `docker stop` v2 and `docker start` v1, nothing else."""
    port = engines.free_port()
    name = f"floor-{uuid.uuid4().hex[:6]}"
    engines.run_demo_container(engine, name, "demo-web:v2", port)
    wait_for_version(port, "v2")
    old = engine.containers.get(name)
    new = engine.containers.create(engine.images.get("demo-web:v1").id, name=f"{name}-next", network_mode="host",
                                   init=True, environment={"PORT": str(port)})
    with httpx.Client(timeout=0.5) as http, version_prober(port, http) as poller:
        started = time.monotonic()
        old.stop(timeout=10)
        new.start()
        total = wait_for_version(port, "v1") - started
    for container in (old, new):
        container.remove(force=True)
    return poller.downtime(), total


def compose_round(engine, address: str, workdir: Path) -> tuple[float, float]:
    """Runbook 004 option 1: `docker-compose down`, retag the previous image, `up -d`."""
    port = engines.free_port()
    project = f"rb{uuid.uuid4().hex[:6]}"
    compose_file = workdir / f"{project}.yml"
    compose_file.write_text(yaml.safe_dump({"services": {"app": {
        "image": "bench-app:latest", "network_mode": "host", "init": True, "environment": {"PORT": str(port)}}}}))
    env = {**os.environ, "DOCKER_HOST": address}

    def compose(*args: str) -> None:
        subprocess.run(["docker-compose", "-p", project, "-f", str(compose_file), *args], check=True, env=env,
                       capture_output=True)

    engine.images.get("demo-web:v2").tag("bench-app", "latest")
    compose("up", "-d")
    wait_for_version(port, "v2")
    with httpx.Client(timeout=0.5) as http, version_prober(port, http) as poller:
        started = time.monotonic()
        compose("down")
        engine.images.get("demo-web:v1").tag("bench-app", "latest")
        compose("up", "-d")
        total = wait_for_version(port, "v1") - started
    compose("down")
    return poller.downtime(), total


async def main(rounds: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="rbbench-"))
    dockerd = None
    address = os.environ.get("DOCKER_HOST")
    if not address:
        dockerd = engines.start_dockerd(Path(tempfile.mkdtemp(prefix="rbdk-", dir="/tmp")))
        address = dockerd.address
    engine = docker.DockerClient(base_url=address, timeout=120)
    for version in ("v1", "v2"):
        engines.build_demo_image(engine, version)
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=engines.temporal_binary(),
                                                search_attributes=SEARCH_ATTRIBUTES,
                                                data_converter=data_converter(), dev_server_log_level="error")
    try:
        ours = [await workflow_round(env, engine, address, workdir) for _ in range(rounds)]
        theirs = [compose_round(engine, address, workdir) for _ in range(rounds)]
        floor = [floor_round(engine, address, workdir) for _ in range(rounds)]
    finally:
        await env.shutdown()
        if dockerd:
            dockerd.stop()

    def show(label: str, runs: list[tuple[float, float]]) -> None:
        downs, totals = [d * 1000 for d, _ in runs], [t for _, t in runs]
        print(f"{label:<44} downtime ms: median {statistics.median(downs):7.0f}  max {max(downs):7.0f}   "
              f"time to good s: median {statistics.median(totals):5.2f}  max {max(totals):5.2f}")

    print(f"Docker app rollback v2 -> v1, {rounds} rounds each, demo app polled every 10 ms")
    show("(a) AppRollbackWorkflow (recreate, verify)", ours)
    show("(b) runbook 004: compose down, retag, up -d", theirs)
    show("(c) floor: docker stop + start, pre-created", floor)
    print("where the last round's time went before the swap (ms after the run started):")
    for line in PATHS[-1]:
        print("   " + line)
    ours_down, theirs_down, floor_down = (statistics.median(d for d, _ in runs) * 1000
                                          for runs in (ours, theirs, floor))
    ours_total, theirs_total = (statistics.median(t for _, t in runs) for runs in (ours, theirs))
    print(f"worker process peak RSS: {max(WORKER_RSS):.0f} MB")
    print(f"ratio ours/runbook: downtime {ours_down / theirs_down:.2f}x, time to good {ours_total / theirs_total:.2f}x")
    report("docker app rollback", {"downtime_ms": round(ours_down), "runbook_downtime_ms": round(theirs_down),
                                   "floor_downtime_ms": round(floor_down),
                                   "time_to_good_s": round(ours_total, 2), "runbook_time_to_good_s": round(theirs_total, 2),
                                   "worker_peak_rss_mb": round(max(WORKER_RSS))})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args().rounds))
    # a process that ran a worker can abort in interpreter teardown (PyGILState_Release)
    sys.stdout.flush()
    os._exit(0)
