"""The worker is SIGKILLed while it polls a Vercel rollback; a new worker finishes the job
without POSTing the rollback a second time."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from tests.contract.vercel import realistic
from tests.helpers import assert_eventually
from tests.integration.test_vercel_rollback import vercel_service
from workflows import AppRollbackWorkflow
from workflows.models import AppRollbackInput, AppRollbackResult

ROLLBACK = str(Path(sys.executable).parent / "rollback")


def start_worker(config_path: str, address: str, task_queue: str, log: Path, **env: str) -> subprocess.Popen:
    env = {**os.environ, "TEMPORAL_ADDRESS": address, "TEMPORAL_TASK_QUEUE": task_queue, **env}
    return subprocess.Popen([ROLLBACK, "worker", "--config", config_path], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


async def killed_and_resumed(client, temporal_address, task_queue, vercel, config, log: Path, reached, message: str,
                             after_kill) -> tuple:
    """Start an app rollback of shop on a worker, SIGKILL the worker once `reached()` holds, check
    `after_kill()`, start a new worker and return the run's handle and result."""
    worker = start_worker(str(config._path), temporal_address, task_queue, log, TEST_VERCEL_TOKEN=vercel.token)
    try:
        handle = await client.start_workflow(AppRollbackWorkflow.run, AppRollbackInput(service="shop"),
                                             id=f"wf-{uuid.uuid4()}", task_queue=task_queue,
                                             result_type=AppRollbackResult)
        await assert_eventually(reached, timeout=60, message=message)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        after_kill()
        worker = start_worker(str(config._path), temporal_address, task_queue, log, TEST_VERCEL_TOKEN=vercel.token)
        result = await asyncio.wait_for(handle.result(), timeout=90)
    finally:
        worker.kill()
        worker.wait(10)
    return handle, result


async def test_sigkill_during_vercel_polling(client, task_queue, temporal_address, vercel, write_config, tmp_path):
    realistic(vercel)
    vercel.job_seconds = 6  # long enough to kill the worker mid-poll
    config = write_config({"shop": vercel_service(vercel)})

    async def polling() -> bool:
        return vercel.count("POST", "/rollback/") == 1 and sum(
            1 for m, p, q, _ in vercel.calls if q.get("rollbackInfo") == "true") >= 3

    def still_running() -> None:
        assert vercel.production["prj_shop"] == "dpl_badprodzzz"  # the job was still running

    handle, result = await killed_and_resumed(client, temporal_address, task_queue, vercel, config,
                                              tmp_path / "worker.log", polling, "rollback POSTed and being polled",
                                              still_running)
    assert result.outcome == "rolled_back"
    assert vercel.count("POST", "/rollback/") == 1  # exactly once, across the crash
    assert vercel.production["prj_shop"] == "dpl_goodprodzz"
    history = [e async for e in handle.fetch_history_events()]
    attempts = [e.activity_task_started_event_attributes.attempt for e in history
                if e.HasField("activity_task_started_event_attributes")]
    assert max(attempts) >= 2  # the execute step really was retried on the new worker


async def test_sigkill_during_a_local_read_hands_the_run_to_the_next_worker(client, task_queue, temporal_address,
                                                                           vercel, write_config, tmp_path):
    """The reads before the rollback call (lock, config, health, what is serving) are local
    activities inside a workflow task: a worker killed in one of them loses the task, Temporal gives
    it to the next worker once the task times out, and that worker reads again and rolls back once."""
    realistic(vercel)
    vercel.stall["project"] = 60  # `vercel.current` reads the project: the worker dies while it waits
    config = write_config({"shop": vercel_service(vercel)})

    def project_reads() -> int:
        return sum(1 for m, p, _, _ in vercel.calls if m == "GET" and p.startswith("/v9/projects/"))

    async def reading() -> bool:
        return project_reads() >= 1

    def nothing_posted() -> None:
        assert vercel.count("POST", "/rollback/") == 0

    handle, result = await killed_and_resumed(client, temporal_address, task_queue, vercel, config,
                                              tmp_path / "worker.log", reading,
                                              "the worker reads what Vercel serves", nothing_posted)
    assert result.outcome == "rolled_back", result.message
    assert vercel.count("POST", "/rollback/") == 1
    assert vercel.production["prj_shop"] == "dpl_goodprodzz"
    history = [e async for e in handle.fetch_history_events()]
    assert any(e.HasField("workflow_task_timed_out_event_attributes") for e in history)  # the lost task
    assert project_reads() >= 2  # read again by the next worker


async def test_sigterm_stops_the_worker_cleanly(temporal_address, task_queue, write_config, tmp_path, vercel):
    config = write_config({"shop": vercel_service(vercel)})
    log = tmp_path / "worker.log"
    worker = start_worker(str(config._path), temporal_address, task_queue, log, TEST_VERCEL_TOKEN=vercel.token)

    async def started() -> bool:
        return "worker started" in log.read_text()

    await assert_eventually(started, timeout=30, message="worker started")
    worker.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(worker.wait, 45)
    assert code == 0
    assert "worker stopped" in log.read_text() and "Traceback" not in log.read_text()


async def test_sigkill_during_docker_execute_serves_again_within_seconds(client, task_queue, temporal_address,
                                                                         docker_engine, write_config, tmp_path):
    """The worker dies inside the blocking container stop of docker.execute. The step heartbeats,
    so Temporal notices within its heartbeat timeout and the retry finishes the recreate from
    where it stands: the good version serves again in seconds, not after the 300 s
    start-to-close timeout, and the bad container is kept aside exactly once."""
    import time

    from temporalio.api.enums.v1 import PendingActivityState

    from activities.docker import DeployLedger, deploy
    from starter import engines
    from tests.integration.test_docker_rollback import docker_service

    name, port = f"web-{uuid.uuid4().hex[:8]}", engines.free_port()
    service = docker_service(docker_engine, name, port)
    service["app"]["docker"]["stop_timeout"] = 8  # httpd as PID 1 ignores SIGTERM: each stop takes 8 s
    config = write_config({"web": service})
    ledger = DeployLedger.of(config.config, "web")
    docker_engine.client.containers.run(docker_engine.images["v1"], name=name, detach=True, network_mode="host",
                                        environment={"PORT": str(port)}, labels={"io.rollback.test": "1"})
    ledger.record(docker_engine.images["v1"], "demo-web:v1")
    deploy(docker_engine.client, name, "demo-web:v2", ledger)
    log = tmp_path / "worker.log"
    worker = start_worker(str(config._path), temporal_address, task_queue, log)
    try:
        handle = await client.start_workflow(AppRollbackWorkflow.run, AppRollbackInput(service="web"),
                                             id=f"wf-{uuid.uuid4()}", task_queue=task_queue,
                                             result_type=AppRollbackResult)

        async def executing() -> bool:
            pending = (await handle.describe()).raw_description.pending_activities
            return any(a.activity_type.name == "docker.execute" and a.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
                       for a in pending)

        await assert_eventually(executing, timeout=60, interval=0.05, message="docker.execute running")
        await asyncio.sleep(0.5)  # inside the stop of the v2 container
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        killed_at = time.monotonic()
        worker = start_worker(str(config._path), temporal_address, task_queue, log)
        result = await asyncio.wait_for(handle.result(), timeout=90)
        recovered_in = time.monotonic() - killed_at
    finally:
        worker.kill()
        worker.wait(10)
    assert result.outcome == "rolled_back", result.message
    container = docker_engine.client.containers.get(name)
    assert container.attrs["Image"] == docker_engine.images["v1"] and container.status == "running"
    kept = [c for c in docker_engine.client.containers.list(all=True) if c.name.startswith(f"{name}-")]
    assert [(c.image.id, c.status) for c in kept] == [(docker_engine.images["v2"], "exited")]  # aside, once
    history = [e async for e in handle.fetch_history_events()]
    attempts = [e.activity_task_started_event_attributes.attempt for e in history
                if e.HasField("activity_task_started_event_attributes")]
    assert max(attempts) >= 2  # the execute step really was retried on the new worker
    assert recovered_in < 60, f"good version back {recovered_in:.0f}s after the crash"
