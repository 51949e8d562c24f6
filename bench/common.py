"""What the benchmarks share."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

ROLLBACK = str(Path(sys.executable).parent / "rollback")


def longest_failure(samples: list[tuple[float, bool]]) -> float:
    """Seconds of the longest run of failed probes in (time, ok) samples: the downtime a user saw."""
    longest, since = 0.0, None
    for at, ok in samples:
        if not ok and since is None:
            since = at
        elif ok and since is not None:
            longest, since = max(longest, at - since), None
    if since is not None:
        longest = max(longest, samples[-1][0] - since)
    return longest


class Prober:
    """Call `probe` every 10 ms in a thread while the `with` block runs; a probe that returns
    False or raises counts as failed. `downtime()` is the longest run of failures."""

    def __init__(self, probe: Callable[[], bool]):
        self._probe = probe
        self.samples: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            at = time.monotonic()
            try:
                ok = bool(self._probe())
            except Exception:  # noqa: BLE001 - any error is what the user sees as "down"
                ok = False
            self.samples.append((at, ok))
            time.sleep(max(0.0, 0.010 - (time.monotonic() - at)))

    def __enter__(self) -> "Prober":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def downtime(self) -> float:
        return longest_failure(self.samples)


def report(benchmark: str, figures: dict) -> None:
    """Add one benchmark's figures to var/bench/results.json (a list of runs) and rewrite
    var/bench/results.md, so runs on different machines and commits can be compared."""
    import json
    import os
    import platform
    import shutil
    import subprocess
    from datetime import datetime, timezone
    from pathlib import Path

    def version(*command: str) -> str:
        if not shutil.which(command[0]):
            return "absent"
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return "unknown"
        return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr).strip() else "?"

    from importlib.metadata import version as package_version

    directory = Path(__file__).resolve().parent.parent / "var" / "bench"
    directory.mkdir(parents=True, exist_ok=True)
    results = directory / "results.json"
    runs = json.loads(results.read_text()) if results.exists() else []
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=directory.parent.parent).stdout.strip()
    runs.append({"benchmark": benchmark, "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "commit": commit, "machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                                               "python": platform.python_version(),
                                               "temporalio": package_version("temporalio"),
                                               "postgres": version("pg_restore", "--version"),
                                               "docker": version("dockerd", "--version")},
                 "figures": figures})
    results.write_text(json.dumps(runs, indent=1) + "\n")
    lines = ["| benchmark | at | commit | cores | figures |", "| --- | --- | --- | --- | --- |"]
    for run in runs:
        shown = ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in run["figures"].items())
        lines.append(f"| {run['benchmark']} | {run['at']} | {run['commit']} | {run['machine']['cores']} | {shown} |")
    (directory / "results.md").write_text("\n".join(lines) + "\n")


def worker_env(client, queue: str, extra: dict | None = None) -> dict[str, str]:
    """The environment of a `rollback worker` (or `rollback webhook`) process on `queue`."""
    return {**os.environ, "TEMPORAL_ADDRESS": client.service_client.config.target_host, "TEMPORAL_TASK_QUEUE": queue,
            **(extra or {})}


def start_workers(count: int, config: Path, env: dict) -> list[subprocess.Popen]:
    """As deployed: each worker a process of its own, not sharing the interpreter of the bench's
    load generator, probes or receiver."""
    return [subprocess.Popen([ROLLBACK, "worker", "--config", str(config)], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL) for _ in range(count)]


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(30)


async def polling(client, task_queue: str, timeout: float = 60) -> None:
    """Wait until a worker polls the task queue."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    request = DescribeTaskQueueRequest(namespace=client.namespace, task_queue=TaskQueue(name=task_queue),
                                       task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW)
    deadline = time.monotonic() + timeout
    while not (await client.workflow_service.describe_task_queue(request)).pollers:
        if time.monotonic() > deadline:
            raise RuntimeError("the worker did not start polling")
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def worker_process(client, config: Path, queue: str):
    """One `rollback worker` process on `queue`, polling before the block runs; yields it (for
    its peak RSS)."""
    (process,) = start_workers(1, config, worker_env(client, queue))
    try:
        await polling(client, queue)  # a worker still starting up would compete for the CPU
        yield process
    finally:
        stop([process])


def peak_rss_mb(pid: int | None = None) -> float:
    """Peak resident memory (VmHWM) of a process, this one by default, in MB."""
    import os

    status = open(f"/proc/{pid or os.getpid()}/status").read()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


async def critical_path(client, workflow_id: str, until_activity: str) -> list[str]:
    """Where a run's time went up to the start of `until_activity`: for each activity, when it was
    scheduled (ms after the run started), how long it waited for a worker and how long it ran;
    for local activities (the reads before the first change), when each was done."""
    import json

    scheduled: dict[int, tuple[str, float]] = {}
    started: dict[int, float] = {}
    children: dict[int, float] = {}
    lines, begin = [], None
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        at = event.event_time.ToDatetime().timestamp() * 1000
        begin = begin if begin is not None else at
        if event.HasField("workflow_task_started_event_attributes") and not lines:
            lines.append(f"{at - begin:7.0f} ms  first workflow task started (the worker begins the run)")
        if event.HasField("marker_recorded_event_attributes"):
            marker = event.marker_recorded_event_attributes
            if marker.marker_name != "core_local_activity" or "data" not in marker.details:
                continue
            try:
                data = json.loads(marker.details["data"].payloads[0].data)
            except ValueError:  # not the core's plain JSON: nothing to read
                continue
            # the marker holds when it completed (by the worker's clock, on this machine the same)
            done = data["complete_time"]["seconds"] * 1000 + data["complete_time"]["nanos"] / 1e6
            lines.append(f"{done - begin:7.0f} ms  {data['activity_type'] + ' (local)':<44} done "
                         f"(attempt {data['attempt']})")
        elif event.HasField("start_child_workflow_execution_initiated_event_attributes"):
            children[event.event_id] = at
        elif event.HasField("child_workflow_execution_completed_event_attributes"):
            child = event.child_workflow_execution_completed_event_attributes
            since = children[child.initiated_event_id]
            lines.append(f"{since - begin:7.0f} ms  {'child ' + child.workflow_type.name:<44} ran "
                         f"{at - since:5.0f} ms")
        elif event.HasField("activity_task_scheduled_event_attributes"):
            scheduled[event.event_id] = (event.activity_task_scheduled_event_attributes.activity_type.name, at)
        elif event.HasField("activity_task_started_event_attributes"):
            started[event.activity_task_started_event_attributes.scheduled_event_id] = at
            name, queued = scheduled[event.activity_task_started_event_attributes.scheduled_event_id]
            if name == until_activity:
                lines.append(f"{queued - begin:7.0f} ms  {name} scheduled, started {at - begin:.0f} ms (the mutating call)")
                break
        elif event.HasField("activity_task_completed_event_attributes"):
            key = event.activity_task_completed_event_attributes.scheduled_event_id
            name, queued = scheduled[key]
            lines.append(f"{queued - begin:7.0f} ms  {name:<44} queued {started[key] - queued:5.0f} ms, "
                         f"ran {at - started[key]:5.0f} ms")
    return lines
