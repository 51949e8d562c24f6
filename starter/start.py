"""Starting workflows: the one place that knows workflow IDs and start options.

The CLI and the webhook receiver both start rollbacks through here, so an alert and a person
asking for the same service's rollback meet at the same workflow ID.
"""

from __future__ import annotations

from temporalio.client import Client, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from workflows import AppRollbackWorkflow, IncidentWorkflow
from workflows.incident import incident_id
from workflows.models import AlertNotice, AppRollbackInput, IncidentInput


def app_rollback_id(service: str) -> str:
    """One running app rollback per service: the ID is the service's, reused after it closes."""
    return f"app-rollback-{service}"


async def _start(client: Client, task_queue: str, run, request, workflow_id: str,
                 notice: AlertNotice | None = None) -> WorkflowHandle:
    """Start `run` under the service's ID. With an alert: signal-with-start, so the alert starts the
    run or lands on the one already running; without: refused while one runs
    (WorkflowAlreadyStartedError)."""
    options = (dict(start_signal="alert", start_signal_args=[notice]) if notice is not None
               else dict(id_conflict_policy=WorkflowIDConflictPolicy.FAIL))
    return await client.start_workflow(run, request, id=workflow_id, task_queue=task_queue,
                                       id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE, **options)


async def start_app_rollback(client: Client, task_queue: str, request: AppRollbackInput) -> WorkflowHandle:
    """Start a rollback; fails with WorkflowAlreadyStartedError if one is running for the service."""
    return await _start(client, task_queue, AppRollbackWorkflow.run, request, app_rollback_id(request.service))


async def start_or_attach_app_rollback(
    client: Client, task_queue: str, request: AppRollbackInput, notice: AlertNotice
) -> WorkflowHandle:
    """Start a rollback for an alert, or attach the alert to the one already running."""
    return await _start(client, task_queue, AppRollbackWorkflow.run, request, app_rollback_id(request.service),
                        notice)


async def start_incident(client: Client, task_queue: str, request: IncidentInput) -> WorkflowHandle:
    """Declare an incident; fails with WorkflowAlreadyStartedError while one is open for the service."""
    return await _start(client, task_queue, IncidentWorkflow.run, request, incident_id(request.service))


async def start_or_signal_incident(
    client: Client, task_queue: str, request: IncidentInput, notice: AlertNotice
) -> WorkflowHandle:
    """For the alert receiver: declare the service's incident with this alert, or count the alert
    on the one already open (signal-with-start; the open incident's input is left as it is)."""
    return await _start(client, task_queue, IncidentWorkflow.run, request, incident_id(request.service), notice)
