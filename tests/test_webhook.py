"""The webhook receiver's generic endpoint: authentication, limits, and starting rollbacks."""

from __future__ import annotations

import httpx
import pytest

from starter.start import app_rollback_id
from starter.webhook import MAX_BODY_BYTES, TOKENS_ENV, create_app
from tests.conftest import running_worker
from tests.contract.vercel import realistic
from tests.helpers import kinds, wait_for_phase
from tests.integration.test_vercel_rollback import vercel_service
from workflows import AppRollbackWorkflow
from workflows.models import AppRollbackResult, ApprovalInput

AUTH = {"Authorization": "Bearer hook-secret-2"}


@pytest.fixture
def receiver(client, task_queue, vercel, write_config, monkeypatch):
    realistic(vercel)
    monkeypatch.setenv("TEST_VERCEL_TOKEN", vercel.token)
    monkeypatch.setenv(TOKENS_ENV, "hook-secret-1,hook-secret-2")  # two during rotation
    config = write_config({"shop": vercel_service(vercel, policy={"app_approval": "automatic"})})
    app = create_app(client, config, task_queue)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://receiver")
    return http, config


async def test_refuses_what_it_cannot_trust(receiver, monkeypatch):
    http, _ = receiver
    alert = {"service": "shop", "status": "firing"}
    assert (await http.post("/alerts/generic", json=alert)).status_code == 401
    assert (await http.post("/alerts/generic", json=alert, headers={"Authorization": "Bearer nope"})).status_code == 401
    wrong_type = await http.post("/alerts/generic", content=b"service=shop",
                                 headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"})
    assert wrong_type.status_code == 415
    malformed = await http.post("/alerts/generic", content=b"{not json",
                                headers={**AUTH, "Content-Type": "application/json"})
    assert malformed.status_code == 400 and "malformed" in malformed.json()["reason"]
    huge = await http.post("/alerts/generic", content=b"x" * (MAX_BODY_BYTES + 1),
                           headers={**AUTH, "Content-Type": "application/json"})
    assert huge.status_code == 413
    monkeypatch.setenv(TOKENS_ENV, "")  # no secret configured: fail closed
    assert (await http.post("/alerts/generic", json=alert, headers=AUTH)).status_code == 401
    metrics = (await http.get("/metrics")).text
    assert 'rollback_webhook_rejected_total{reason="unauthenticated",source="generic"} 3.0' in metrics


async def test_unknown_service_and_resolved_start_nothing(receiver, client):
    http, _ = receiver
    unknown = await http.post("/alerts/generic", json={"service": "nope", "status": "firing"}, headers=AUTH)
    assert unknown.status_code == 202 and unknown.json()["started"] is False
    assert "unknown service 'nope'" in unknown.json()["reason"]
    resolved = await http.post("/alerts/generic", json={"service": "shop", "status": "resolved"}, headers=AUTH)
    assert resolved.json()["started"] is False
    assert (await http.get("/healthz")).json() == {"status": "ok"}


async def test_firing_alert_starts_one_rollback_and_further_alerts_attach(receiver, client, task_queue, vercel):
    http, config = receiver
    async with running_worker(client, config, task_queue):
        first = await http.post("/alerts/generic", headers=AUTH,
                                json={"service": "shop", "summary": "5xx at 30%", "fingerprint": "a1"})
        assert first.status_code == 202 and first.json()["workflow_id"] == app_rollback_id("shop")
        handle = client.get_workflow_handle(app_rollback_id("shop"), result_type=AppRollbackResult)
        await wait_for_phase(handle, "awaiting_approval")  # automatic app rollbacks need approval here
        second = await http.post("/alerts/generic", headers=AUTH,
                                 json={"service": "shop", "summary": "still 5xx", "fingerprint": "a1"})
        assert second.json()["workflow_id"] == first.json()["workflow_id"]
        await handle.execute_update(AppRollbackWorkflow.reject, ApprovalInput(approver="oncall", reason="test"))
        result = await handle.result()
    assert result.outcome == "rejected"
    timeline = kinds(result.timeline)
    assert timeline.count("signal") == 2  # both alerts on the one incident's timeline
    assert vercel.count("POST", "") == 0
