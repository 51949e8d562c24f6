"""SIGTERM drains: a worker told to stop (Kubernetes evicting its pod) finishes the activity it is
running within --shutdown-grace instead of abandoning it, and a step longer than the grace is
cancelled and retried by the next worker. deploy/k8s/worker.yaml relies on this."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

from temporalio.api.enums.v1 import EventType

from tests.contract.server import serve
from tests.contract.vercel import FakeVercel, realistic
from tests.e2e.test_observability import start_worker, stop
from tests.helpers import assert_eventually
from tests.integration.test_vercel_rollback import vercel_service
from workflows import AppRollbackWorkflow
from workflows.models import AppRollbackInput, AppRollbackResult

SLOW_SECONDS = 4.0


async def attempts_of(handle, activity: str) -> tuple[list[int], int]:
    """The attempt numbers history records for `activity` (Temporal writes the started event of
    the last attempt only, so [1] means no retry) and how many completions."""
    started, completed, scheduled = [], 0, set()
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            if event.activity_task_scheduled_event_attributes.activity_type.name == activity:
                scheduled.add(event.event_id)
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            if event.activity_task_started_event_attributes.scheduled_event_id in scheduled:
                started.append(event.activity_task_started_event_attributes.attempt)
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            completed += event.activity_task_completed_event_attributes.scheduled_event_id in scheduled
    return started, completed


async def run_with_sigterm(client, temporal_address, task_queue, write_config, tmp_path, grace: int):
    fake = FakeVercel()
    realistic(fake)
    fake.job_seconds = SLOW_SECONDS  # Vercel's rollback job: vercel.execute waits for it to finish
    server = serve(fake.app())
    fake.url = server.url
    config = write_config({"shop": vercel_service(fake)})
    log = tmp_path / "first.log"
    first = start_worker(str(config._path), temporal_address, task_queue, log, "--shutdown-grace", str(grace),
                         TEST_VERCEL_TOKEN=fake.token)
    second = None
    try:
        await assert_eventually(lambda: asyncio.to_thread(lambda: "worker started" in log.read_text()), 30,
                                message="worker started")
        handle = await client.start_workflow(AppRollbackWorkflow.run, AppRollbackInput(service="shop"),
                                             id=f"wf-{uuid.uuid4()}", task_queue=task_queue,
                                             result_type=AppRollbackResult)
        await assert_eventually(lambda: asyncio.sleep(0, fake.count("POST", "/rollback/") == 1), 20,
                                message="vercel.execute in flight (the rollback POSTed, its job running)")
        signalled = time.monotonic()
        first.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(first.wait, 60)
        stopped_after = time.monotonic() - signalled
        second = start_worker(str(config._path), temporal_address, task_queue, tmp_path / "second.log",
                              TEST_VERCEL_TOKEN=fake.token)
        result = await asyncio.wait_for(handle.result(), timeout=90)
        return code, stopped_after, result, await attempts_of(handle, "vercel.execute"), fake
    finally:
        stop(first)
        if second is not None:
            stop(second)
        server.stop()


async def test_sigterm_lets_the_running_activity_finish(client, temporal_address, task_queue, write_config, tmp_path):
    code, stopped_after, result, (started, completed), fake = await run_with_sigterm(
        client, temporal_address, task_queue, write_config, tmp_path, grace=30)
    assert code == 0
    assert stopped_after > SLOW_SECONDS - 1.5  # it waited for the Vercel answer rather than leaving at once
    assert started == [1] and completed == 1  # finished by the draining worker, never retried
    assert result.outcome == "rolled_back", result.message
    assert fake.count("POST", "/rollback/") == 1


async def test_a_step_longer_than_the_grace_is_cancelled_and_retried(client, temporal_address, task_queue,
                                                                     write_config, tmp_path):
    code, stopped_after, result, (started, completed), fake = await run_with_sigterm(
        client, temporal_address, task_queue, write_config, tmp_path, grace=1)
    assert code == 0 and stopped_after < SLOW_SECONDS
    assert started == [2] and completed == 1  # cancelled on the first worker, run again by the second
    assert result.outcome == "rolled_back", result.message
    assert fake.count("POST", "/rollback/") == 1
