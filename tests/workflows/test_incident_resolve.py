"""Who may close an incident, and when: `rollback resolve` by someone the approver policy refuses
changes nothing; one sent while the incident is still being assessed (a false alarm) stops it
before anything is switched off or asked; one sent during the watch after recovery ends it. On
the dev server, with stand-ins for the app's read-only steps."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone

import pytest
import yaml
from temporalio.client import WorkflowUpdateFailedError

from activities.common import ConfigSource
from tests.conftest import running_worker
from tests.helpers import assert_eventually, kinds
from tests.workflows.test_incident_comms import stand_ins
from workflows import IncidentWorkflow
from workflows.models import AppVersion, IncidentInput, IncidentResult, IncidentStatus, Milestones, Phase, ResolveInput


def policy_config(tmp_path) -> ConfigSource:
    path = tmp_path / "rollback.yaml"
    path.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"), "artifact_dir": str(tmp_path / "incidents"),
        "people": {"alice": {}, "carol": {}},
        "approvals": {"incident": {"people": ["alice"]}},
        "services": {"web": {"app": {"provider": "docker", "docker": {"container": "web"}},
                             "health": {"url": "http://127.0.0.1:9/health"}}}}))
    return ConfigSource(path)


V1 = AppVersion(provider="docker", id="sha256:v1", label="demo-web:v1")  # a version to roll back to


async def status_of(handle) -> IncidentStatus:
    return await handle.query(IncidentWorkflow.status)


async def test_a_resolve_the_policy_refuses_changes_nothing(client, task_queue, tmp_path):
    queue = task_queue
    async with running_worker(client, policy_config(tmp_path), queue, replace=stand_ins(V1)):
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
    assert result.outcome == "resolved" and result.children == []  # nothing was rolled back
    decided = [e.message for e in result.timeline if e.kind.value == "decided"]
    assert "resolved by alice: false alarm" in decided and not any("carol" in m for m in decided)


async def test_a_resolve_while_it_is_assessed_stops_it_before_anything_changes(client, task_queue, tmp_path):
    queue = task_queue
    assessed, release = asyncio.Event(), asyncio.Event()
    async with running_worker(client, policy_config(tmp_path), queue, replace=stand_ins(V1, assessed, release)):
        handle = await client.start_workflow(IncidentWorkflow.run, IncidentInput(service="web", severity="P1"),
                                             id=f"incident-web-{uuid.uuid4().hex[:6]}", task_queue=queue,
                                             result_type=IncidentResult)
        await asyncio.wait_for(assessed.wait(), 30)
        assert await handle.execute_update(IncidentWorkflow.resolve, ResolveInput(reason="false alarm", by="alice")) \
            == "resolving: false alarm"
        release.set()
        result = await asyncio.wait_for(handle.result(), 60)  # not the plan approval's 2 x 30 minutes
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
