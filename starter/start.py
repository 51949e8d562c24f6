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


async def start_app_rollback(client: Client, task_queue: str, request: AppRollbackInput) -> WorkflowHandle:
    """Start a rollback; fails with WorkflowAlreadyStartedError if one is running for the service."""
    return await client.start_workflow(
        AppRollbackWorkflow.run,
        request,
        id=app_rollback_id(request.service),
        task_queue=task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
    )


async def start_or_attach_app_rollback(
    client: Client, task_queue: str, request: AppRollbackInput, notice: AlertNotice
) -> WorkflowHandle:
    """Start a rollback for an alert, or attach the alert to the one already running."""
    return await client.start_workflow(
        AppRollbackWorkflow.run,
        request,
        id=app_rollback_id(request.service),
        task_queue=task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        start_signal="alert",
        start_signal_args=[notice],
    )



async def start_incident(client: Client, task_queue: str, request: IncidentInput) -> WorkflowHandle:
    """Declare an incident; fails with WorkflowAlreadyStartedError while one is open for the service."""
    return await client.start_workflow(
        IncidentWorkflow.run,
        request,
        id=incident_id(request.service),
        task_queue=task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
    )


async def start_or_signal_incident(
    client: Client, task_queue: str, request: IncidentInput, notice: AlertNotice
) -> WorkflowHandle:
    """For the alert receiver: declare the service's incident with this alert, or count the alert
    on the one already open (signal-with-start; the open incident's input is left as it is)."""
    return await client.start_workflow(
        IncidentWorkflow.run,
        request,
        id=incident_id(request.service),
        task_queue=task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        start_signal="alert",
        start_signal_args=[notice],
    )
