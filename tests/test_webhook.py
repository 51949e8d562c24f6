"""The webhook receiver end to end on the real dev server: authentication, limits, replays,
and starting (or attaching to) one incident workflow per service."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
import hmac
import json

import httpx
import pytest

from starter.start import app_rollback_id
from starter.webhook import TOKENS_ENV, create_app
from tests.conftest import running_worker
from tests.contract.vercel import realistic
from tests.helpers import assert_eventually, kinds, wait_for_phase
from tests.integration.test_vercel_rollback import vercel_service
from tests.unit.test_alerts import golden
from workflows import AppRollbackWorkflow
from workflows.models import AppRollbackResult, ApprovalInput

AUTH = {"Authorization": "Bearer hook-secret-2"}
FIRING = {"service": "shop", "summary": "5xx at 30%", "fingerprint": "a1", "error_rate": 0.3}


@pytest.fixture
def receiver(client, task_queue, vercel, write_config, monkeypatch):
    realistic(vercel)
    monkeypatch.setenv("TEST_VERCEL_TOKEN", vercel.token)
    monkeypatch.setenv(TOKENS_ENV, "hook-secret-1,hook-secret-2")  # two during rotation
    monkeypatch.setenv("TEST_SENTRY_SECRET", "sentry-client-secret")
    monkeypatch.setenv("TEST_AM_TOKEN", "am-token")

    def make(policy: dict | None = None, **webhooks):
        # Workflow IDs are per service and the dev server is shared: a fresh service name per
        # test, which alerts labelled service=shop map to.
        service = vercel_service(vercel, alert_match={"service": "shop"}, **({"policy": policy} if policy else {}))
        path = write_config({name: service})._path
        raw = path.read_text()
        import yaml

        document = yaml.safe_load(raw)
        document["webhooks"] = {"sources": {"sentry": {"secret_env": "TEST_SENTRY_SECRET"},
                                            "alertmanager": {"bearer_env": "TEST_AM_TOKEN"}}, **webhooks}
        path.write_text(yaml.safe_dump(document))
        from activities.common import ConfigSource

        config = ConfigSource(path)
        app = create_app(client, config, task_queue)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://receiver"), config

    name = f"shop-{uuid.uuid4().hex[:8]}"
    make.service = name
    make.workflow_id = app_rollback_id(name)
    return make


async def test_refuses_what_it_cannot_trust(receiver, monkeypatch):
    http, _ = receiver()
    assert (await http.post("/alerts/generic", json=FIRING)).status_code == 401
    assert (await http.post("/alerts/generic", json=FIRING, headers={"Authorization": "Bearer nope"})).status_code == 401
    wrong_type = await http.post("/alerts/generic", content=b"service=shop",
                                 headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"})
    assert wrong_type.status_code == 415
    malformed = await http.post("/alerts/generic", content=b"{not json",
                                headers={**AUTH, "Content-Type": "application/json"})
    assert malformed.status_code == 400 and "malformed" in malformed.json()["reason"]
    huge = await http.post("/alerts/generic", content=b"x" * ((1 << 20) + 1),
                           headers={**AUTH, "Content-Type": "application/json"})
    assert huge.status_code == 413
    forged = await http.post("/alerts/sentry", content=golden("sentry_issue_alert.json"),
                             headers={"Content-Type": "application/json", "Sentry-Hook-Signature": "0" * 64})
    assert forged.status_code == 401
    unconfigured = await http.post("/alerts/pagerduty", content=golden("pagerduty_triggered.json"),
                                   headers={"Content-Type": "application/json", "X-PagerDuty-Signature": "v1=00"})
    assert unconfigured.status_code == 401 and "fail closed" in unconfigured.json()["reason"]
    monkeypatch.setenv(TOKENS_ENV, "")  # no secret configured: fail closed
    assert (await http.post("/alerts/generic", json=FIRING, headers=AUTH)).status_code == 401
    metrics = (await http.get("/metrics")).text
    assert 'rollback_webhook_rejected_total{reason="unauthenticated",source="generic"} 3.0' in metrics
    assert (await http.get("/healthz")).json() == {"status": "ok"}


async def test_unknown_service_watch_and_resolved_start_nothing(receiver, client):
    http, _ = receiver()
    unknown = await http.post("/alerts/generic", json={**FIRING, "service": "nope"}, headers=AUTH)
    assert unknown.status_code == 202 and unknown.json()["alerts"][0]["started"] is False
    assert "no configured service matches" in unknown.json()["alerts"][0]["reason"]
    watch = await http.post("/alerts/generic", json={**FIRING, "error_rate": 0.02}, headers=AUTH)
    assert watch.json()["alerts"][0]["decision"] == "watch" and not watch.json()["alerts"][0]["started"]
    resolved = await http.post("/alerts/alertmanager", content=golden("alertmanager_resolved.json"),
                               headers={"Authorization": "Bearer am-token", "Content-Type": "application/json"})
    assert {a["decision"] for a in resolved.json()["alerts"]} == {"resolve"}
    assert not any(a["started"] for a in resolved.json()["alerts"])


async def test_signed_sentry_alert_starts_before_the_answer_and_replays_are_ignored(receiver, client, vercel):
    http, _ = receiver(policy={"app_approval": "automatic"})
    raw = golden("sentry_issue_alert.json").replace(b'"level": "error"', b'"level": "fatal"')
    raw = raw.replace(b'"triggered_rule"', b'"error_rate": 0.3, "triggered_rule"')
    body = json.loads(raw)
    body["data"]["event"]["tags"].append(["category", "payments"])  # P0: roll back now
    raw = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Request-ID": "req-42", "Sentry-Hook-Resource": "event_alert",
               "Sentry-Hook-Signature": hmac.new(b"sentry-client-secret", raw, hashlib.sha256).hexdigest()}
    first = await http.post("/alerts/sentry", content=raw, headers=headers)
    assert first.status_code == 202, first.text
    (result,) = first.json()["alerts"]
    assert result["started"] and result["decision"] == "rollback" and result["rule"].startswith("P0")
    # started before we answered: the workflow exists the moment the response is in
    description = await client.get_workflow_handle(result["workflow_id"]).describe()
    assert description.status.name == "RUNNING"
    replay = await http.post("/alerts/sentry", content=raw, headers=headers)
    assert replay.status_code == 200 and replay.json()["duplicate"] is True
    await client.get_workflow_handle(result["workflow_id"]).terminate("test over")


async def test_burst_of_identical_alerts_starts_one_workflow(receiver, client, task_queue, vercel):
    http, config = receiver(policy={"app_approval": "automatic"})
    raw = golden("alertmanager_grouped_firing.json")
    headers = {"Authorization": "Bearer am-token", "Content-Type": "application/json"}
    async with running_worker(client, config, task_queue):
        answers = await asyncio.gather(*(http.post("/alerts/alertmanager", content=raw, headers=headers)
                                         for _ in range(200)))
        assert all(a.status_code in (200, 202) for a in answers)
        handle = client.get_workflow_handle(receiver.workflow_id, result_type=AppRollbackResult)
        await wait_for_phase(handle, "awaiting_approval")
        count = (await client.count_workflows(f"WorkflowId = '{receiver.workflow_id}'")).count
        await handle.execute_update(AppRollbackWorkflow.reject, ApprovalInput(approver="oncall", reason="test"))
        result = await handle.result()
    assert count == 1
    assert sum(1 for a in answers if a.json().get("duplicate")) == 199
    assert kinds(result.timeline).count("signal") == 2  # the two grouped alerts, once
    assert vercel.count("POST", "") == 0


async def test_flapping_within_cooldown_never_rolls_back_twice(receiver, client, task_queue, vercel):
    http, config = receiver()
    handle = client.get_workflow_handle(receiver.workflow_id, result_type=AppRollbackResult)
    async with running_worker(client, config, task_queue):
        first = await http.post("/alerts/generic", json=FIRING, headers=AUTH)
        assert first.json()["alerts"][0]["started"]

        async def watching() -> bool:
            status = await handle.query(AppRollbackWorkflow.status)
            return any(e.message.startswith("watching up to") for e in status.timeline)

        await assert_eventually(watching, message="rolled back and watching for the alert to resolve")
        resolved = await http.post("/alerts/generic", json={**FIRING, "status": "resolved"}, headers=AUTH)
        assert resolved.json()["alerts"][0]["decision"] == "resolve" and resolved.json()["alerts"][0]["attached"]
        result = await handle.result()
        assert result.outcome == "rolled_back"
        assert any(e.message == "the alert resolved after the rollback" for e in result.timeline)

        async def visible() -> bool:
            return (await client.count_workflows(
                f"RollbackService = '{receiver.service}' AND RollbackTrigger = 'automatic'")).count >= 1

        await assert_eventually(visible, message="first rollback visible")
        again = await http.post("/alerts/generic", json={**FIRING, "summary": "flap"}, headers=AUTH)
        assert again.json()["alerts"][0]["needs_approval"] is True
        second = client.get_workflow_handle(receiver.workflow_id, result_type=AppRollbackResult)
        status = await wait_for_phase(second, "awaiting_approval")
        assert "cooldown" in status.timeline[-1].message or any("cooldown" in e.message for e in status.timeline)
        await second.cancel()
    assert vercel.count("POST", "/rollback/") == 1  # one rollback, not two


async def test_notify_only_switch_turns_rollbacks_into_dry_runs(receiver, client, task_queue, vercel):
    http, config = receiver(notify_only=True)
    async with running_worker(client, config, task_queue):
        answer = await http.post("/alerts/generic", json=FIRING, headers=AUTH)
        assert answer.json()["alerts"][0]["dry_run"] is True
        result = await client.get_workflow_handle(receiver.workflow_id, result_type=AppRollbackResult).result()
    assert result.outcome == "dry_run" and vercel.count("POST", "") == 0


async def test_temporal_down_is_503_and_the_retry_is_not_a_replay(receiver, client, monkeypatch):
    from temporalio.service import RPCError, RPCStatusCode

    http, _ = receiver()
    raw = golden("alertmanager_grouped_firing.json")
    headers = {"Authorization": "Bearer am-token", "Content-Type": "application/json"}

    async def unavailable(*args, **kwargs):
        raise RPCError("connection refused", RPCStatusCode.UNAVAILABLE, b"")

    import starter.webhook as webhook

    monkeypatch.setattr(webhook, "start_or_attach_app_rollback", unavailable)
    down = await http.post("/alerts/alertmanager", content=raw, headers=headers)
    assert down.status_code == 503
    monkeypatch.undo()
    monkeypatch.setenv("TEST_AM_TOKEN", "am-token")
    retry = await http.post("/alerts/alertmanager", content=raw, headers=headers)
    assert retry.status_code == 202 and retry.json()["alerts"][0]["started"]
    await client.get_workflow_handle(receiver.workflow_id).terminate("test over")
