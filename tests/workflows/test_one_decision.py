"""Two people decide the same approval at the same moment: exactly one decision is recorded, the
other caller is told it lost, and the run does what the recorded decision says."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from temporalio import activity
from temporalio.client import WorkflowUpdateFailedError
from temporalio.worker import Worker

from tests.helpers import kinds, wait_for_phase
from tests.workflows.test_approval_timeout import stand_ins
from workflows import AppRollbackWorkflow
from workflows.models import (AppRollbackInput, AppRollbackResult, ApprovalDecision, ApprovalInput, StatusPageRequest,
                              VerifyRequest, VerifyResult)


@activity.defn(name="health.verify")
async def verify(request: VerifyRequest) -> VerifyResult:
    return VerifyResult(passed=True)


@activity.defn(name="statuspage.post")
async def status_page(request: StatusPageRequest) -> str:
    return ""


@pytest.mark.parametrize("second", ["approve", "reject"])
async def test_simultaneous_decisions_one_wins(env, second):
    executed, notices = [], []
    queue = f"tq-{uuid.uuid4()}"
    async with Worker(env.client, task_queue=queue, workflows=[AppRollbackWorkflow],
                      activities=[*stand_ins(executed, notices), verify, status_page]):
        for attempt in range(5):  # several tries: the race needs both Updates in one workflow task
            executed.clear()
            handle = await env.client.start_workflow(
                AppRollbackWorkflow.run, AppRollbackInput(service="web"), id=f"wf-{uuid.uuid4()}",
                task_queue=queue, result_type=AppRollbackResult)
            await wait_for_phase(handle, "awaiting_approval")
            outcomes = await asyncio.gather(
                handle.execute_update("approve", ApprovalInput(approver="alice", reason="go"),
                                      result_type=ApprovalDecision),
                handle.execute_update(second, ApprovalInput(approver="bob", reason=f"{second} too"),
                                      result_type=ApprovalDecision),
                return_exceptions=True)
            accepted = [o for o in outcomes if not isinstance(o, BaseException)]
            refused = [o for o in outcomes if isinstance(o, BaseException)]
            assert len(accepted) == 1 and len(refused) == 1, outcomes
            assert isinstance(refused[0], WorkflowUpdateFailedError)
            assert "was already" in str(refused[0].cause) and "your decision was not recorded" in str(refused[0].cause)
            result = await handle.result()
            decisions = [k for k in kinds(result.timeline) if k in ("approved", "rejected")]
            assert decisions == ["approved" if accepted[0].approved else "rejected"]
            assert result.outcome == ("rolled_back" if accepted[0].approved else "rejected")
            assert len(executed) == (1 if accepted[0].approved else 0)
