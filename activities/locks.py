"""Taking and releasing the per-service and per-database locks (workflows/lock.py) for a run.

The database resource is named by host, port and database name, read from the DSN here in the
worker (no password), so two services configured with the same database share its lock.
"""

from __future__ import annotations

from psycopg.conninfo import conninfo_to_dict
from temporalio import activity
from temporalio.client import Client, WithStartWorkflowOperation, WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from activities.common import ConfigSource, resolve_secret
from workflows.lock import ResourceLockWorkflow, lock_id
from workflows.models import LockHolder, LockInput, LockRelease, LockRequest, LockResult


class LockActivities:
    def __init__(self, client: Client, config: ConfigSource):
        self._client = client
        self._config = config

    def resources(self, service: str, kinds: list[str]) -> list[str]:
        found = []
        if "service" in kinds:
            found.append(f"service:{service}")
        database = self._config.service(service).database
        if "database" in kinds and database is not None:
            parts = conninfo_to_dict(resolve_secret(database.dsn_env, service))
            found.append(f"database:{parts.get('host') or 'localhost'}:{parts.get('port') or 5432}/"
                         f"{parts.get('dbname') or 'postgres'}")
        return sorted(found)

    async def _acquire(self, resource: str, me: LockHolder) -> LockHolder:
        return await self._client.execute_update_with_start_workflow(
            ResourceLockWorkflow.acquire, me,
            start_workflow_operation=WithStartWorkflowOperation(
                ResourceLockWorkflow.run, LockInput(resource=resource), id=lock_id(activity.info().task_queue, resource),
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING, task_queue=activity.info().task_queue),
            result_type=LockHolder)

    async def _stale(self, holder: LockHolder) -> bool:
        """The holder's run has ended (or is gone) without releasing: a crash or a terminate."""
        try:
            described = await self._client.get_workflow_handle(holder.workflow_id, run_id=holder.run_id).describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return True
            raise
        return described.status != WorkflowExecutionStatus.RUNNING

    async def _release(self, resource: str, holder: LockHolder) -> None:
        try:
            await self._client.get_workflow_handle(lock_id(activity.info().task_queue, resource)).execute_update(
                ResourceLockWorkflow.release, holder, result_type=bool)
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:  # no lock workflow: nothing held
                raise

    @activity.defn(name="locks.acquire")
    async def acquire(self, request: LockRequest) -> LockResult:
        """All of the service's resources, in a fixed order, or none: who holds the first busy one."""
        held: list[str] = []
        for resource in self.resources(request.service, request.kinds):
            holder = await self._acquire(resource, request.holder)
            if holder.run_id != request.holder.run_id and await self._stale(holder):
                activity.logger.warning("releasing %s held by %s, which ended without releasing it",
                                        resource, holder.workflow_id)
                await self._release(resource, holder)
                holder = await self._acquire(resource, request.holder)
            if holder.run_id != request.holder.run_id:
                for taken in held:
                    await self._release(taken, request.holder)
                return LockResult(granted=False, busy=resource, holder=holder)
            held.append(resource)
        return LockResult(granted=True, resources=held)

    @activity.defn(name="locks.release")
    async def release(self, request: LockRelease) -> None:
        for resource in request.resources:
            await self._release(resource, request.holder)
