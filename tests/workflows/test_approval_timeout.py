"""Long timers on the time-skipping test server: a 4-hour approval window passes in a moment.

Activities are stand-ins registered under the real names; the workflow code is the real one.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from temporalio import activity
from temporalio.worker import Worker

from tests.helpers import kinds
from workflows import AppRollbackWorkflow
from workflows.config import ServiceConfig
from workflows.models import (
    AuditBatch,
    AppRollbackInput,
    AppRollbackResult,
    AppVersion,
    CaptureRequest,
    CaptureResult,
    RecentRollbacks,
    EnvReadRequest,
    EnvSnapshot,
    ExecuteRequest,
    ExecuteResult,
    HealthSnapshot,
    LockRelease,
    LockRequest,
    LockResult,
    NotifyRequest,
    PostmortemRequest,
    ServiceContext,
    ServiceRef,
    TargetRequest,
)

SERVICE = ServiceConfig.model_validate({
    "app": {"provider": "vercel", "vercel": {"project": "p"}},
    "health": {"url": "http://127.0.0.1:9/health"},
    "policy": {"app_approval": "always"},
})


def stand_ins(executed: list, notices: list) -> list:
    @activity.defn(name="config.service")
    async def service(request: ServiceRef) -> ServiceContext:
        return ServiceContext(service=request.service, config=SERVICE, artifact_dir="")

    @activity.defn(name="health.assess")
    async def assess(request: ServiceRef) -> HealthSnapshot:
        return HealthSnapshot(reachable=True, http_status=503, healthy=False, problem="down")

    @activity.defn(name="vercel.current")
    async def current(request: ServiceRef) -> AppVersion:
        return AppVersion(provider="vercel", id="dpl_new", label="new")

    @activity.defn(name="visibility.recent_automatic_rollbacks")
    async def recent(request: ServiceRef) -> RecentRollbacks:
        return RecentRollbacks(in_cooldown=0, in_hour=0, limit_reached=False)

    @activity.defn(name="vercel.capture_state")
    async def capture(request: CaptureRequest) -> CaptureResult:
        return CaptureResult()

    @activity.defn(name="vercel.env_read")
    async def env_read(request: EnvReadRequest) -> EnvSnapshot:
        return EnvSnapshot(service=request.service, provider="vercel", deployment="dpl_new",
                           taken_at=datetime.now(timezone.utc), ref="0" * 32)

    @activity.defn(name="vercel.select_target")
    async def select(request: TargetRequest) -> AppVersion:
        return AppVersion(provider="vercel", id="dpl_old", label="old")

    @activity.defn(name="vercel.execute")
    async def execute(request: ExecuteRequest) -> ExecuteResult:
        executed.append(request)
        return ExecuteResult(provider="vercel")

    @activity.defn(name="notify.slack")
    async def slack(request: NotifyRequest) -> bool:
        notices.append(request)
        return True

    @activity.defn(name="capture.postmortem")
    async def postmortem(request: PostmortemRequest) -> str:
        return "postmortem.md"

    @activity.defn(name="locks.acquire")
    async def acquire(request: LockRequest) -> LockResult:
        return LockResult(granted=True, resources=[f"service:{request.service}"])

    @activity.defn(name="locks.release")
    async def release(request: LockRelease) -> None:
        return None

    @activity.defn(name="audit.append")
    async def audit(batch: AuditBatch) -> int:
        return len(batch.entries)

    return [service, assess, current, recent, capture, env_read, select, execute, slack, postmortem, acquire, release,
            audit]


async def test_approval_timeout_escalates_and_never_proceeds(skipping_env, record_history):
    executed, notices = [], []
    queue = f"tq-{uuid.uuid4()}"
    async with Worker(skipping_env.client, task_queue=queue, workflows=[AppRollbackWorkflow],
                      activities=stand_ins(executed, notices)):
        handle = await skipping_env.client.start_workflow(
            AppRollbackWorkflow.run,
            AppRollbackInput(service="web", approval_timeout=timedelta(hours=4), automatic=True),
            id=f"wf-{uuid.uuid4()}", task_queue=queue, result_type=AppRollbackResult,
        )
        result = await handle.result()
        await record_history(handle)  # the approval-timeout branch, for the replay corpus
    assert result.outcome == "not_approved"
    assert executed == []  # nothing acted
    timeline = kinds(result.timeline)
    assert timeline.index("approval_requested") < timeline.index("escalated") < timeline.index("failed")
    escalated = next(e for e in result.timeline if e.kind.value == "escalated")
    requested = next(e for e in result.timeline if e.kind.value == "approval_requested")
    assert escalated.at - requested.at >= timedelta(hours=4)
    assert [n.escalation for n in notices] == [False, True]
    assert "ESCALATION" in notices[1].text
