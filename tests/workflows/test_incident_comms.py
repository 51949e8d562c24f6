"""An incident's communication over hours, on the time-skipping test server: escalation and a
PagerDuty page when nobody acknowledges within the severity's response time, Slack updates on the
severity's cadence, the Statuspage incident walked to resolved. The Slack, PagerDuty and
Statuspage activities are the real ones, against contract servers; only the app's read-only
provider and assess steps are stand-ins (registered under the real names)."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from temporalio import activity
from temporalio.client import WorkflowUpdateFailedError

from activities.common import ConfigSource, fail
from tests.conftest import running_worker
from tests.helpers import assert_eventually, kinds
from workflows import IncidentWorkflow
from workflows.models import (
    AcknowledgeInput,
    AppVersion,
    AssessReport,
    HealthSnapshot,
    IncidentInput,
    IncidentResult,
    IncidentStatus,
    ResolveInput,
    ServiceRef,
    SeverityInput,
    TargetRequest,
)




def config(tmp_path, slack_url: str, statuspage, pagerduty) -> ConfigSource:
    path = tmp_path / "rollback.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"), "artifact_dir": str(tmp_path / "incidents"),
                                    "services": {"web": {
        "app": {"provider": "docker", "docker": {"container": "web"}},
        "health": {"url": "http://127.0.0.1:9/health"},
        "notify": {"slack_webhook_env": "TEST_SLACK_WEBHOOK", "escalation_slack_webhook_env": "TEST_SLACK_WEBHOOK",
                   "statuspage": {"page_id": statuspage.page_id, "api_key_env": "TEST_STATUSPAGE_KEY",
                                  "component_id": "cmp_web", "api_url": statuspage.url},
                   "pagerduty": {"routing_key_env": "TEST_PD_ROUTING_KEY", "api_url": pagerduty.url}},
    }}}))
    return ConfigSource(path)


def stand_ins(target: AppVersion | None = None, assessed: asyncio.Event | None = None,
              release: asyncio.Event | None = None) -> list:
    """Read-only steps only: the app at v2 with no earlier version to roll back to (or `target`);
    `assess` can be held (it sets `assessed`, then waits for `release`)."""

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
        if target is None:
            raise fail("no earlier image in the deploy ledger")
        return target

    return [assess, current, select]


def texts(slack) -> list[str]:
    return [m["text"] for m in slack.messages]


async def test_escalation_cadence_and_statuspage_over_hours(skipping_env, tmp_path, slack, statuspage, pagerduty,
                                                   record_history):
    client, queue = skipping_env.client, f"tq-{uuid.uuid4()}"
    source = config(tmp_path, "", statuspage, pagerduty)
    async with running_worker(client, source, queue, replace=stand_ins()):
        handle = await client.start_workflow(IncidentWorkflow.run, IncidentInput(service="web", severity="P0",
                                             reason="checkout returns 500"),
                                             id=f"incident-web-{uuid.uuid4().hex[:6]}", task_queue=queue,
                                             result_type=IncidentResult)
        await skipping_env.sleep(timedelta(minutes=61))
        status = await handle.query(IncidentWorkflow.status)
        assert isinstance(status, IncidentStatus) and status.phase.value == "mitigating"
        sent = texts(slack)
        assert sent[0].startswith("🚨 PRODUCTION INCIDENT DECLARED 🚨") and "Severity: P0" in sent[0]
        assert "Next update in 15 minutes" in sent[0]
        # nobody acknowledged within P0's 5 minutes: one escalation, one page, deduplicated by incident id
        escalations = [t for t in sent if t.startswith("ESCALATION: P0 incident")]
        assert len(escalations) == 1
        assert [e["event_action"] for e in pagerduty.events] == ["trigger"]
        assert pagerduty.events[0]["dedup_key"] == "incident-web"
        assert pagerduty.events[0]["payload"]["severity"] == "critical"
        paged = next(e for e in status.timeline if e.kind.value == "escalated" and "paging" in e.message)
        assert timedelta(minutes=5) <= paged.at - status.milestones.detected < timedelta(minutes=6)
        # P0: an update every 15 minutes, in runbook 001's template
        updates = [t for t in sent if t.startswith("🚨 INCIDENT UPDATE - P0")]
        assert len(updates) == 4, updates
        assert all("Next Update:" in u and "On-call: not acknowledged" in u for u in updates)
        assert "no rollback" in sent[1] or any("nothing to roll back" in u for u in updates)
        # a public incident for P0, investigating
        (incident,) = statuspage.incidents.values()
        assert incident["status"] == "investigating" and statuspage.components["cmp_web"] == "partial_outage"

        # acknowledged: PagerDuty's alert is acknowledged too; a second ack is refused
        await handle.execute_update(IncidentWorkflow.acknowledge, AcknowledgeInput(by="alice"))
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(IncidentWorkflow.acknowledge, AcknowledgeInput(by="bob"))
        assert pagerduty.alerts["incident-web"] == "acknowledged"
        # lowered to P2: updates every hour from now on
        await handle.execute_update(IncidentWorkflow.set_severity, SeverityInput(severity="P2", reason="only the "
                                                                                 "admin page", by="alice"))
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(IncidentWorkflow.set_severity, SeverityInput(severity="P9", reason="x"))
        before = len(texts(slack))
        await skipping_env.sleep(timedelta(hours=2, minutes=1))
        p2_updates = [t for t in texts(slack)[before:] if t.startswith("🚨 INCIDENT UPDATE - P2")]
        assert len(p2_updates) == 2 and all("On-call: alice" in u for u in p2_updates)

        await handle.execute_update(IncidentWorkflow.resolve, ResolveInput(reason="admin page fixed forward",
                                                                          by="alice"))
        result = await handle.result()
        await record_history(handle)  # escalation, cadence and Statuspage over hours, for the replay corpus

    assert result.outcome == "resolved"
    assert pagerduty.alerts["incident-web"] == "resolved"
    assert [e["event_action"] for e in pagerduty.events] == ["trigger", "acknowledge", "resolve"]
    assert incident["status"] == "resolved" and statuspage.components["cmp_web"] == "operational"
    assert statuspage.component_history["cmp_web"] == ["partial_outage", "operational"]  # down, then back
    assert [u["status"] for u in incident["incident_updates"]] == ["investigating", "resolved"]
    resolved = next(t for t in texts(slack) if t.startswith("✅ INCIDENT RESOLVED ✅"))
    # 182 minutes slept; the time-skipping server also moves time while activities run, so the
    # measured duration lands on either side of the minute
    assert re.search(r"Duration: 3 hours [12] minutes", resolved) and "On-call: alice" in resolved
    assert result.durations["time_to_acknowledge"] == pytest.approx(61 * 60, abs=60)
    assert result.durations["time_to_resolve"] == pytest.approx(182 * 60, abs=60)
    assert kinds(result.timeline).count("resolved") == 1
    assert any(t.startswith("Post-mortem of incident-web") for t in texts(slack))


async def test_alerts_are_counted_per_fingerprint(skipping_env, tmp_path, slack, statuspage, pagerduty,
                                                   record_history):
    from workflows.models import AlertNotice

    client, queue = skipping_env.client, f"tq-{uuid.uuid4()}"
    async with running_worker(client, config(tmp_path, "", statuspage, pagerduty), queue, replace=stand_ins()):
        handle = await client.start_workflow(IncidentWorkflow.run, IncidentInput(service="web", severity="P1"),
                                             id=f"incident-web-{uuid.uuid4().hex[:6]}", task_queue=queue,
                                             result_type=IncidentResult)
        for _ in range(20):
            await handle.signal(IncidentWorkflow.alert, AlertNotice(source="alertmanager", summary="5xx",
                                                                    fingerprint="abc"))
        await handle.signal(IncidentWorkflow.alert, AlertNotice(source="alertmanager", summary="latency",
                                                                fingerprint="def"))
        await handle.execute_update(IncidentWorkflow.acknowledge, AcknowledgeInput(by="alice"))
        status = await handle.query(IncidentWorkflow.status)
        await handle.execute_update(IncidentWorkflow.resolve, ResolveInput(reason="false alarm", by="alice"))
        await handle.result()
    counts = {a.fingerprint: a.count for a in status.alerts}
    assert counts == {"abc": 20, "def": 1}
    assert kinds(status.timeline).count("signal") == 2
    assert pagerduty.events == []  # acknowledged within P1's 15 minutes: nobody paged


async def test_raised_to_p1_the_incident_goes_public(skipping_env, tmp_path, slack, statuspage, pagerduty,
                                                   record_history):
    """A P2 incident has no status page; raised to P1 (runbook 001: P0/P1 are public) it gets one
    at once, which is walked to resolved at the end even if the severity is lowered again."""
    client, queue = skipping_env.client, f"tq-{uuid.uuid4()}"
    async with running_worker(client, config(tmp_path, "", statuspage, pagerduty), queue, replace=stand_ins()):
        handle = await client.start_workflow(IncidentWorkflow.run, IncidentInput(service="web", severity="P2",
                                             reason="admin page 500s"),
                                             id=f"incident-web-{uuid.uuid4().hex[:6]}", task_queue=queue,
                                             result_type=IncidentResult)
        for _ in range(100):  # refused while the incident is still starting
            try:
                await handle.execute_update(IncidentWorkflow.acknowledge, AcknowledgeInput(by="alice"))
                break
            except WorkflowUpdateFailedError:
                await asyncio.sleep(0.1)
        assert (await handle.query(IncidentWorkflow.status)).acknowledged_by == "alice"
        assert statuspage.incidents == {}
        await handle.execute_update(IncidentWorkflow.set_severity,
                                    SeverityInput(severity="P1", reason="checkout affected too", by="alice"))
        # raised after the incident was announced, the update itself opens the page; raised while it
        # is still being announced, the announcement goes out as P1's, public: a moment later
        await assert_eventually(lambda: asyncio.sleep(0, bool(statuspage.incidents)), 10,
                                message="a status page incident for the P1")
        (incident,) = statuspage.incidents.values()
        assert incident["status"] == "investigating" and statuspage.components["cmp_web"] == "partial_outage"
        await handle.execute_update(IncidentWorkflow.set_severity,
                                    SeverityInput(severity="P2", reason="checkout fine after all", by="alice"))
        await handle.execute_update(IncidentWorkflow.resolve, ResolveInput(reason="fixed forward", by="alice"))
        assert (await handle.result()).outcome == "resolved"
        await record_history(handle)
    assert len(statuspage.incidents) == 1 and incident["status"] == "resolved"
    assert statuspage.component_history["cmp_web"] == ["partial_outage", "operational"]
