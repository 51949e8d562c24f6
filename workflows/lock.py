"""The lock on one resource (a service, a database): a small workflow per resource, ID
`lock:<task queue>:<resource>`, acquired and released through Updates (Temporal's mutex pattern, with
update-with-start so the caller learns at once whether it got the lock).

A rollback started from the UI under any ID still meets every other run of the same service
here. The holder is a top-level run; children run under their parent's lock. A holder that died
without releasing (terminated, its history deleted) is recognised by the acquiring activity,
which describes it and releases it as stale.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows.models import LockHolder, LockInput

# An idle lock ends after this; the next acquirer starts a fresh one (short histories).
IDLE_BEFORE_ENDING = timedelta(minutes=1)


def lock_id(task_queue: str, resource: str) -> str:
    """The lock workflow of `resource` among the workers of one task queue (one deployment)."""
    return f"lock:{task_queue}:{resource}"


@workflow.defn
class ResourceLockWorkflow:
    def __init__(self) -> None:
        self.holder: LockHolder | None = None

    @workflow.run
    async def run(self, request: LockInput) -> None:
        while True:
            await workflow.wait_condition(lambda: self.holder is None)
            try:
                await workflow.wait_condition(lambda: self.holder is not None, timeout=IDLE_BEFORE_ENDING)
            except asyncio.TimeoutError:
                await workflow.wait_condition(workflow.all_handlers_finished)
                if self.holder is None:
                    return

    @workflow.update
    def acquire(self, request: LockHolder) -> LockHolder:
        """Take the lock if it is free (or already ours); the holder after the call either way."""
        if self.holder is None or self.holder.run_id == request.run_id:
            self.holder = request
        return self.holder

    @workflow.update
    def release(self, request: LockHolder) -> bool:
        """Let go of the lock if `request` holds it (a stale holder is released by its run ID)."""
        if self.holder is not None and self.holder.run_id == request.run_id:
            self.holder = None
            return True
        return False

    @workflow.query
    def held_by(self) -> LockHolder | None:
        return self.holder
