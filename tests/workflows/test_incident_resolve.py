"""Who may close an incident, and when: `rollback resolve` by someone the approver policy refuses
changes nothing; one sent while the incident is still being assessed (a false alarm) stops it
before anything is switched off or asked; one sent during the watch after recovery ends it. On
the time-skipping test server, with the real notification activities against contract servers
and stand-ins for the app's read-only steps."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone

import pytest
import yaml
from temporalio import activity
from temporalio.client import WorkflowUpdateFailedError

from activities.common import ConfigSource
from tests.conftest import running_worker
from tests.helpers import assert_eventually, kinds
from workflows import IncidentWorkflow
from workflows.models import (AppVersion, AssessReport, HealthSnapshot, IncidentInput, IncidentResult, IncidentStatus,
                              Milestones, Phase, ResolveInput, ServiceRef, TargetRequest)


def policy_config(tmp_path) -> ConfigSource:
    path = tmp_path / "rollback.yaml"
    path.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"), "artifact_dir": str(tmp_path / "incidents"),
        "people": {"alice": {}, "carol": {}},
        "approvals": {"incident": {"people": ["alice"]}},
        "services": {"web": {"app": {"provider": "docker", "docker": {"container": "web"}},
                             "health": {"url": "http://127.0.0.1:9/health"}}}}))
    return ConfigSource(path)


def stand_ins(assessed: asyncio.Event | None = None, release: asyncio.Event | None = None) -> list:
    """The app at v2 with v1 to roll back to; `assess` can be held until the test lets it go."""

    @activity.defn(name="incident.assess")
    async def assess(request: ServiceRef) -> AssessReport:
        if assessed is not None:
            assessed.set()
            await release.wait()
        return AssessReport(service=request.service, at=datetime.now(timezone.utc),
                            health=HealthSnapshot(reachable=True, http_status=200, status="degraded",
                                                  error_rate=0.27, problem="error rate 27.0%"))

    @activity.defn(name="docker.current")
    async def current(request: ServiceRef) -> AppVersion:
        return AppVersion(provider="docker", id="sha256:v2", label="demo-web:v2")

    @activity.defn(name="docker.select_target")
    async def select(request: TargetRequest) -> AppVersion:
        return AppVersion(provider="docker", id="sha256:v1", label="demo-web:v1")

    return [assess, current, select]


async def status_of(handle) -> IncidentStatus:
    return await handle.query(IncidentWorkflow.status)


async def test_a_resolve_the_policy_refuses_changes_nothing(skipping_env, tmp_path, record_history):
    client, queue = skipping_env.client, f"tq-{uuid.uuid4()}"
    async with running_worker(client, policy_config(tmp_path), queue, replace=stand_ins()):
        handle = await client.start_workflow(IncidentWorkflow.run, IncidentInput(service="web", severity="P1"),
                                             id=f"incident-web-{uuid.uuid4().hex[:6]}", task_queue=queue,
                                             result_type=IncidentResult)

        async def asking() -> bool:
            return (await status_of(handle)).waiting_for_approval == "incident plan"

        await assert_eventually(asking, timeout=30, message="plan approval asked")
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(IncidentWorkflow.resolve, ResolveInput(reason="false alarm", by="carol"))
        assert "carol may not decide incident steps" in str(refused.value.cause)
        state = await status_of(handle)  # refused: still open, still asking, the allowed people can decide
        assert state.waiting_for_approval == "incident plan" and state.phase.value == "awaiting_approval"
        assert await handle.execute_update(IncidentWorkflow.resolve, ResolveInput(reason="false alarm", by="alice")) \
            == "resolving: false alarm"
        result = await handle.result()
        await record_history(handle)
    assert result.outcome == "resolved" and result.children == []  # nothing was rolled back
    decided = [e.message for e in result.timeline if e.kind.value == "decided"]
    assert "resolved by alice: false alarm" in decided and not any("carol" in m for m in decided)


async def test_a_resolve_while_it_is_assessed_stops_it_before_anything_changes(skipping_env, tmp_path,
                                                                               record_history):
    client, queue = skipping_env.client, f"tq-{uuid.uuid4()}"
    assessed, release = asyncio.Event(), asyncio.Event()
    async with running_worker(client, policy_config(tmp_path), queue, replace=stand_ins(assessed, release)):
        handle = await client.start_workflow(IncidentWorkflow.run, IncidentInput(service="web", severity="P1"),
                                             id=f"incident-web-{uuid.uuid4().hex[:6]}", task_queue=queue,
                                             result_type=IncidentResult)
        await asyncio.wait_for(assessed.wait(), 30)
        assert await handle.execute_update(IncidentWorkflow.resolve, ResolveInput(reason="false alarm", by="alice")) \
            == "resolving: false alarm"
        release.set()
        result = await handle.result()
        await record_history(handle)
    assert result.outcome == "resolved"
    assert "approval_requested" not in kinds(result.timeline) and result.children == []
    assert any("resolved before the plan was asked for" in e.message for e in result.timeline)


def test_a_resolve_is_taken_during_the_watch_after_recovery_not_during_verification():
    incident = IncidentWorkflow()
    incident.phase = Phase.VERIFYING
    incident.milestones = Milestones(started=datetime.now(timezone.utc), detected=datetime.now(timezone.utc))
    with pytest.raises(ValueError, match="verifying; wait"):
        incident._check_resolve(ResolveInput(reason="fixed", by="alice"))
    incident.milestones.mitigated = datetime.now(timezone.utc)  # verified: the watch may be cut short
    incident._check_resolve(ResolveInput(reason="fixed", by="alice"))
