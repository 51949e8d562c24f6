"""A test-only worker process: the real worker (`worker.main.build_worker`) plus an activity
interceptor that SIGKILLs its own process at the start or at the end of an activity.

    python -m tests.crash_worker --config C --task-queue Q --ledger FILE --at start|beat|end [--only ACTIVITY[,ACTIVITY…]]
                                 [--standby]

It crashes at the first activity call not yet listed in the ledger (a JSON line per crash, naming
every call that died), so the test can fail those attempts by ID and a new worker, started next,
crashes at the next call. "start" kills
before the activity runs (the retry starts from scratch); "end" kills after it did its work and
before Temporal hears of it, the case that proves a step idempotent: the retry runs it a second
time on a world where it already happened; "beat" kills at a call's first heartbeat, half-way
through a long step (only steps that heartbeat crash in that pass). `--standby` imports everything, then waits for a line
on stdin before connecting: the test keeps one warm so a restart takes a fraction of a second.

The hook lives here, never in production code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path

from temporalio import activity
from temporalio.worker import (ActivityInboundInterceptor, ActivityOutboundInterceptor, ExecuteActivityInput,
                               Interceptor)

from activities.common import ConfigSource
from worker.main import build_worker
from worker.settings import TemporalSettings, connect


def call_key(info: activity.Info) -> str:
    """One activity call of one run: the same key for every attempt of it."""
    return f"{info.workflow_type}:{info.workflow_id}:{info.activity_id}:{info.activity_type}"


def crashes(ledger: Path) -> list[dict]:
    if not ledger.exists():
        return []
    return [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()]


class CrashAt(Interceptor):
    """Kill the process once every activity it runs stands at its crash point.

    A call that reaches its point parks there (heartbeating) until the other calls running beside
    it (a safety backup runs while a restore does) finish or park too; then the process dies with
    all of them at their point. So no call is killed twice or mid-way, each dead attempt is
    failed once, and no step's retry budget is spent on the matrix's bookkeeping.
    """

    def __init__(self, ledger: Path, at: str, only: str | None = None) -> None:
        self.ledger, self.at = ledger, at
        self.done = {call["key"] for crash in crashes(ledger) for call in crash["calls"]}
        self.only = set(only.split(",")) if only else None
        self.running: dict[str, activity.Info] = {}
        self.parked: set[str] = set()

    def due(self, info: activity.Info) -> bool:
        """Crash at this call: not crashed at yet (and of the activities asked for, if any)."""
        return call_key(info) not in self.done and (self.only is None or info.activity_type in self.only)

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Crashing(next, self)

    async def park(self, key: str) -> None:
        self.parked.add(key)
        # activities the workflow scheduled side by side reach this worker a moment apart: let
        # them register before deciding that nothing else runs (one that arrived unseen would die
        # unlisted and wait out its whole timeout)
        await asyncio.sleep(0.5)
        while not self.running.keys() <= self.parked:
            try:
                activity.heartbeat({"parked": self.at})
            except Exception:  # noqa: BLE001 - a step without heartbeats; the test fails the attempt anyway
                pass
            await asyncio.sleep(0.05)
        self.die()

    def die(self) -> None:
        """Log every call this process runs (they all die), then SIGKILL it."""
        entry = {"at": self.at, "calls": [{"key": k, "workflow_id": i.workflow_id, "run_id": i.workflow_run_id,
                                           "activity_id": i.activity_id, "activity": i.activity_type,
                                           "workflow_type": i.workflow_type, "attempt": i.attempt}
                                          for k, i in self.running.items()]}
        with self.ledger.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.kill(os.getpid(), signal.SIGKILL)


class _Crashing(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, plan: CrashAt) -> None:
        super().__init__(next)
        self.plan = plan

    def init(self, outbound: ActivityOutboundInterceptor) -> None:
        super().init(_BeatCrashing(outbound, self.plan))

    async def execute_activity(self, input: ExecuteActivityInput):
        info = activity.info()
        if info.is_local:
            # the reads before a run's first change are local activities, inside a workflow task:
            # a worker that dies in one loses that task, and Temporal gives it to the next worker
            # after the task's timeout (tests/e2e/test_worker_crash.py kills one there)
            return await self.next.execute_activity(input)
        key = call_key(info)
        crash_here = self.plan.due(info)
        self.plan.running[key] = info
        try:
            if crash_here and self.plan.at == "start":
                await self.plan.park(key)
            result = await self.next.execute_activity(input)
            if crash_here and self.plan.at == "end":
                await self.plan.park(key)
            return result
        finally:
            self.plan.running.pop(key, None)


class _BeatCrashing(ActivityOutboundInterceptor):
    """--at beat: die at a call's first heartbeat, in the middle of its work (a container half
    recreated, a volume half filled, a dump half written), whatever else runs beside it."""

    def __init__(self, next: ActivityOutboundInterceptor, plan: CrashAt) -> None:
        super().__init__(next)
        self.plan = plan

    def heartbeat(self, *details) -> None:
        if self.plan.at == "beat" and self.plan.due(activity.info()):
            self.plan.die()
        super().heartbeat(*details)


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--ledger", required=True, type=Path)
    parser.add_argument("--at", choices=("start", "beat", "end"), default="start")
    parser.add_argument("--only", help="crash only at calls of these activity types (comma-separated)")
    parser.add_argument("--standby", action="store_true")
    args = parser.parse_args(argv)
    if args.standby and not await asyncio.to_thread(sys.stdin.readline):
        return  # the test ended without needing this one
    client = await connect(TemporalSettings())
    # A workflow cache as in production (without one, the SDK cancels a run's local reads whenever
    # another run needs the cache, and a lock taken by a local read never arrives), but a short
    # sticky timeout: a dead worker's next workflow task goes to the standby after a second, and
    # the standby replays the whole history (a determinism check at every crash).
    worker = build_worker(client, ConfigSource(Path(args.config)), args.task_queue,
                          interceptors=[CrashAt(args.ledger, args.at, args.only)], max_cached_workflows=100,
                          sticky_queue_schedule_to_start_timeout=timedelta(seconds=1))
    async with worker:
        print("crash worker started", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())

