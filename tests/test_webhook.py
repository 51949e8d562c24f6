"""The webhook receiver end to end on the real dev server: authentication, limits, hostile
input, replays, and starting (or attaching to) one incident workflow per service."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from starter.webhook import TOKENS_ENV, create_app
from tests.conftest import running_worker
from tests.helpers import assert_eventually, kinds, wait_for_phase
from tests.receiver import receiver, signed_headers, started  # noqa: F401 - receiver is a fixture
from tests.unit.test_alerts import golden
from workflows import AppRollbackWorkflow
from workflows.models import AppRollbackResult, ApprovalInput

AUTH = {"Authorization": "Bearer hook-secret-2"}
FIRING = {"service": "shop", "summary": "5xx at 30%", "fingerprint": "a1", "error_rate": 0.3}


async def test_refuses_what_it_cannot_trust(receiver, monkeypatch):
    http = receiver().asgi()
    assert (await http.post("/alerts/generic", json=FIRING)).status_code == 401
    assert (await http.post("/alerts/generic", json=FIRING, headers={"Authorization": "Bearer nope"})).status_code == 401
    wrong_type = await http.post("/alerts/generic", content=b"service=shop",
                                 headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"})
    assert wrong_type.status_code == 415
    # authentication comes first: without it, a wrong content type learns nothing more than 401
    anonymous = await http.post("/alerts/generic", content=b"service=shop",
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert anonymous.status_code == 401
    malformed = await http.post("/alerts/generic", content=b"{not json",
                                headers={**AUTH, "Content-Type": "application/json"})
    assert malformed.status_code == 400 and "malformed" in malformed.json()["reason"]
    huge = await http.post("/alerts/generic", content=b"x" * ((1 << 20) + 1),
                           headers={**AUTH, "Content-Type": "application/json"})
    assert huge.status_code == 413
    forged = await http.post("/alerts/sentry", content=golden("sentry_issue_alert.json"),
                             headers={"Content-Type": "application/json", "Sentry-Hook-Signature": "0" * 64})
    assert forged.status_code == 401
    monkeypatch.delenv("TEST_PD_SECRET")
    unconfigured = await http.post("/alerts/pagerduty", content=golden("pagerduty_triggered.json"),
                                   headers={"Content-Type": "application/json", "X-PagerDuty-Signature": "v1=00"})
    assert unconfigured.status_code == 401
    monkeypatch.setenv(TOKENS_ENV, "")  # no secret configured: fail closed
    assert (await http.post("/alerts/generic", json=FIRING, headers=AUTH)).status_code == 401
    metrics = (await http.get("/metrics")).text
    assert 'rollback_webhook_rejected_total{reason="unauthenticated",source="generic"} 4.0' in metrics
    assert 'rollback_webhook_rejected_total{reason="content_type",source="generic"} 1.0' in metrics
    assert (await http.get("/healthz")).json() == {"status": "ok"}


async def test_unknown_service_watch_and_resolved_start_nothing(receiver, client):
    http = receiver().asgi()
    unknown = await http.post("/alerts/generic", json={**FIRING, "service": "nope"}, headers=AUTH)
    assert unknown.status_code == 202 and unknown.json()["alerts"][0]["started"] is False
    assert unknown.json()["alerts"][0]["action"] == "ignore"
    assert "no configured service matches" in unknown.json()["alerts"][0]["rule"]
    watch = await http.post("/alerts/generic", json={**FIRING, "error_rate": 0.02}, headers=AUTH)
    assert watch.json()["alerts"][0]["action"] == "watch" and not watch.json()["alerts"][0]["started"]
    raw = golden("alertmanager_resolved.json")
    resolved = await http.post("/alerts/alertmanager", content=raw, headers=signed_headers("alertmanager", raw))
    assert {a["action"] for a in resolved.json()["alerts"]} == {"resolve"}
    assert not any(a["started"] for a in resolved.json()["alerts"])
    assert not await started(client, receiver.service)


class HeldStarts:
    """The receiver's Temporal client, holding each start once Temporal has accepted it, until the
    test lets it go: the test can look while the HTTP exchange is still open."""

    def __init__(self, client):
        self._client = client
        self.accepted, self.release = asyncio.Event(), asyncio.Event()

    def __getattr__(self, name):
        return getattr(self._client, name)

    async def start_workflow(self, *args, **kwargs):
        handle = await self._client.start_workflow(*args, **kwargs)
        self.accepted.set()
        await self.release.wait()
        return handle


async def test_signed_sentry_alert_starts_before_the_answer_and_replays_are_ignored(receiver, client, vercel):
    hook = receiver(policy={"app_approval": "automatic"})
    held = HeldStarts(client)
    body = json.loads(golden("sentry_issue_alert.json"))
    body["data"]["event"]["tags"].append(["category", "payments"])  # P0: roll back now
    raw = json.dumps(body).encode()
    headers = signed_headers("sentry", raw, **{"Request-ID": "req-42", "Sentry-Hook-Resource": "event_alert"})
    async with hook.http(create_app(held, hook.config, hook.task_queue)) as http:  # real HTTP, real uvicorn
        answer = asyncio.create_task(http.post("/alerts/sentry", content=raw, headers=headers))
        await asyncio.wait_for(held.accepted.wait(), timeout=30)
        # the workflow runs in Temporal while the sender is still waiting for its answer
        description = await client.get_workflow_handle(hook.workflow_id).describe()
        assert description.status.name == "RUNNING" and not answer.done()
        await asyncio.sleep(0.3)
        assert not answer.done()  # the receiver answers only after the start
        held.release.set()
        first = await answer
        assert first.status_code == 202, first.text
        (result,) = first.json()["alerts"]
        assert result["started"] and result["action"] == "rollback" and result["rule"].startswith("P0")
        assert result["workflow_id"] == hook.workflow_id
        replay = await http.post("/alerts/sentry", content=raw, headers=headers)
        assert replay.status_code == 200 and replay.json()["duplicate"] is True
    await client.get_workflow_handle(result["workflow_id"]).terminate("test over")


async def test_burst_of_identical_alerts_starts_one_workflow(receiver, client, task_queue, vercel):
    hook = receiver(policy={"app_approval": "automatic"})
    http = hook.asgi()
    raw = golden("alertmanager_grouped_firing.json")
    headers = signed_headers("alertmanager", raw)
    async with running_worker(client, hook.config, task_queue):
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
    hook = receiver()
    http = hook.asgi()
    handle = client.get_workflow_handle(receiver.workflow_id, result_type=AppRollbackResult)
    async with running_worker(client, hook.config, task_queue):
        first = await http.post("/alerts/generic", json=FIRING, headers=AUTH)
        assert first.json()["alerts"][0]["started"]

        async def watching() -> bool:
            status = await handle.query(AppRollbackWorkflow.status)
            return any(e.message.startswith("watching up to") for e in status.timeline)

        await assert_eventually(watching, message="rolled back and watching for the alert to resolve")
        resolved = await http.post("/alerts/generic", json={**FIRING, "status": "resolved"}, headers=AUTH)
        assert resolved.json()["alerts"][0]["action"] == "resolve" and resolved.json()["alerts"][0]["attached"]
        result = await handle.result()
        assert result.outcome == "rolled_back"
        assert any(e.message == "the alert resolved after the rollback" for e in result.timeline)

        async def visible() -> bool:
            return (await client.count_workflows(
                f"RollbackService = '{receiver.service}' AND RollbackTrigger = 'automatic'")).count >= 1

        await assert_eventually(visible, message="first rollback visible")
        again = await http.post("/alerts/generic", json={**FIRING, "summary": "flap"}, headers=AUTH)
        assert again.json()["alerts"][0]["started"]  # and the run finds the first one within its cooldown:
        second = client.get_workflow_handle(receiver.workflow_id, result_type=AppRollbackResult)
        status = await wait_for_phase(second, "awaiting_approval")
        assert "cooldown" in status.timeline[-1].message or any("cooldown" in e.message for e in status.timeline)
        await second.cancel()
    assert vercel.count("POST", "/rollback/") == 1  # one rollback, not two


async def test_notify_only_switch_turns_rollbacks_into_dry_runs(receiver, client, task_queue, vercel):
    hook = receiver(notify_only=True)
    http = hook.asgi()
    async with running_worker(client, hook.config, task_queue):
        answer = await http.post("/alerts/generic", json=FIRING, headers=AUTH)
        assert answer.json()["alerts"][0]["dry_run"] is True
        result = await client.get_workflow_handle(receiver.workflow_id, result_type=AppRollbackResult).result()
    assert result.outcome == "dry_run" and vercel.count("POST", "") == 0


async def test_temporal_down_is_503_and_the_retry_is_not_a_replay(receiver, client, monkeypatch):
    from temporalio.service import RPCError, RPCStatusCode

    http = receiver().asgi()
    raw = golden("alertmanager_grouped_firing.json")
    headers = signed_headers("alertmanager", raw)

    async def unavailable(*args, **kwargs):
        raise RPCError("connection refused", RPCStatusCode.UNAVAILABLE, b"")

    import starter.webhook as webhook

    original = webhook.start_or_attach_app_rollback
    monkeypatch.setattr(webhook, "start_or_attach_app_rollback", unavailable)
    down = await http.post("/alerts/alertmanager", content=raw, headers=headers)
    assert down.status_code == 503 and down.json() == {"accepted": False, "reason": "Temporal unavailable; retry"}
    monkeypatch.setattr(webhook, "start_or_attach_app_rollback", original)
    retry = await http.post("/alerts/alertmanager", content=raw, headers=headers)
    assert retry.status_code == 202 and retry.json()["alerts"][0]["started"]
    metrics = (await http.get("/metrics")).text
    assert 'rollback_webhook_rejected_total{reason="temporal_unavailable",source="alertmanager"} 1.0' in metrics
    await client.get_workflow_handle(receiver.workflow_id).terminate("test over")


async def test_hostile_input_is_a_4xx_never_a_5xx_and_every_rejection_is_counted(receiver, client):
    hook = receiver()
    async with hook.http() as http:
        deep = b'{"service": "shop", "labels": ' + b"[" * 5000 + b"]" * 5000 + b"}"
        answer = await http.post("/alerts/generic", content=deep, headers=signed_headers("generic", deep))
        assert answer.status_code == 400 and "nested too deeply" in answer.json()["reason"]

        # NaN, Infinity and 1e999 are valid for Python's json; as a value they are absent, and said so
        for minute, value in enumerate((b"NaN", b"Infinity", b"1e999")):
            raw = golden("alertmanager_firing.json").replace(b'"value": "0.23"', b'"value": ' + value)
            raw = raw.replace(b"10:00:00.000Z", f"10:0{minute}:00.000Z".encode())  # each a new occurrence
            raw = raw.replace(b'"severity": "critical"', b'"severity": "warning"')  # P2: notify, start nothing
            answer = await http.post("/alerts/alertmanager", content=raw, headers=signed_headers("alertmanager", raw))
            assert answer.status_code == 202, answer.text
            (alert,) = answer.json()["alerts"]
            assert alert["values"] == {} and "not a finite number: treated as absent" in alert["note"]
            assert alert["action"] == "notify"

        # signed timestamps: PagerDuty's occurred_at in the future or missing, Sentry's header missing
        from datetime import datetime, timedelta, timezone

        ahead = golden("pagerduty_triggered.json", datetime.now(timezone.utc) + timedelta(minutes=6))
        answer = await http.post("/alerts/pagerduty", content=ahead, headers=signed_headers("pagerduty", ahead))
        assert answer.status_code == 401 and "future" in answer.json()["reason"]
        missing = json.loads(golden("pagerduty_triggered.json"))
        del missing["event"]["occurred_at"]
        missing = json.dumps(missing).encode()
        answer = await http.post("/alerts/pagerduty", content=missing, headers=signed_headers("pagerduty", missing))
        assert answer.status_code == 401 and "missing" in answer.json()["reason"]
        raw = golden("sentry_metric_alert.json")
        headers = signed_headers("sentry", raw)
        del headers["Sentry-Hook-Timestamp"]
        answer = await http.post("/alerts/sentry", content=raw, headers=headers)
        assert answer.status_code == 401 and "Sentry-Hook-Timestamp is missing" in answer.json()["reason"]
        assert not await started(client, hook.service)

        metrics = (await http.get("/metrics")).text
        for reason, source, count in (("too_deep", "generic", 1), ("future", "pagerduty", 1),
                                      ("missing_timestamp", "pagerduty", 1), ("missing_timestamp", "sentry", 1)):
            assert f'rollback_webhook_rejected_total{{reason="{reason}",source="{source}"}} {count}.0' in metrics
        assert 'reason="internal"' not in metrics


async def test_lone_surrogates_reach_temporal_cleaned(receiver, client):
    hook = receiver()
    async with hook.http() as http:
        raw = (golden("alertmanager_firing.json")
               .replace(b'"High error rate on shop"', b'"High \\ud800 error \\udfff rate"')
               .replace(b'"job": "shop"', b'"job\\udc00": "sh\\ud83dop"'))
        answer = await http.post("/alerts/alertmanager", content=raw, headers=signed_headers("alertmanager", raw))
        assert answer.status_code == 202, answer.text
        (alert,) = answer.json()["alerts"]
        assert alert["labels"]["job\ufffd"] == "sh\ufffdop" and alert["started"]
    handle = client.get_workflow_handle(hook.workflow_id)
    signals = [json.loads(e.workflow_execution_signaled_event_attributes.input.payloads[0].data)
               async for e in handle.fetch_history_events()
               if e.HasField("workflow_execution_signaled_event_attributes")]
    assert [s["summary"] for s in signals] == ["High \ufffd error \ufffd rate (rollback, rule: error rate 23.0% above "
                                               "the rollback threshold 5.0%)"]
    await handle.terminate("test over")


async def test_client_disconnecting_mid_body_is_one_log_line_and_counted(receiver, caplog):
    hook = receiver()
    async with hook.http() as http:
        host, port = http.base_url.host, http.base_url.port

        def send_half() -> None:
            with socket.create_connection((host, port)) as sock:
                sock.sendall(b"POST /alerts/generic HTTP/1.1\r\nHost: receiver\r\nContent-Type: application/json\r\n"
                             b"Authorization: Bearer hook-secret-2\r\nContent-Length: 1000\r\n\r\n{\"service\": \"sh")

        with caplog.at_level("WARNING", logger="rollback.webhook"):
            await asyncio.to_thread(send_half)

            async def counted() -> bool:
                return 'reason="client_disconnect",source="generic"} 1.0' in (await http.get("/metrics")).text

            await assert_eventually(counted, timeout=10, message="disconnect counted")
        lines = [r for r in caplog.records if r.name == "rollback.webhook"]
        assert len(lines) == 1 and "disconnected" in lines[0].getMessage() and not lines[0].exc_info
        assert (await http.get("/healthz")).json() == {"status": "ok"}  # still up


async def test_a_page_acknowledged_in_pagerduty_acknowledges_the_incident(receiver, client, task_queue):
    """PagerDuty's `incident.acknowledged` (signed, real HTTP) acknowledges the service's open
    incident under the PagerDuty user's name, which stops its response-time escalation; a second
    acknowledgement changes nothing."""
    hook = receiver(service_alerts={"rules": [{"matchers": ['severity=~"P0|P1"'], "action": "incident"}]})
    triggered = json.loads(golden("pagerduty_triggered.json"))

    def event(kind: str, event_id: str, agent: str) -> bytes:
        body = json.loads(json.dumps(triggered))
        body["event"].update(id=event_id, event_type=kind,
                             agent={"id": "PTUXL6G", "summary": agent, "type": "user_reference"})
        return json.dumps(body).encode()

    incident = client.get_workflow_handle(f"incident-{hook.service}")
    async with running_worker(client, hook.config, task_queue), hook.http() as http:
        raw = event("incident.triggered", "ev-1", "shop")
        declared = await http.post("/alerts/pagerduty", content=raw, headers=signed_headers("pagerduty", raw))
        assert declared.status_code == 202 and declared.json()["alerts"][0]["action"] == "incident", declared.text
        await wait_for_phase(incident, "awaiting_approval", timeout=60)
        assert (await incident.query("status")).get("acknowledged_by") is None

        raw = event("incident.acknowledged", "ev-2", "Jane Doe")
        acked = await http.post("/alerts/pagerduty", content=raw, headers=signed_headers("pagerduty", raw))
        (answer,) = acked.json()["alerts"]
        assert answer["action"] == "acknowledge" and answer["acknowledged"] is True, acked.text
        status = await incident.query("status")
        assert status["acknowledged_by"] == "Jane Doe (via pagerduty)"
        assert status["milestones"]["acknowledged"] is not None

        raw = event("incident.acknowledged", "ev-3", "John Roe")
        again = await http.post("/alerts/pagerduty", content=raw, headers=signed_headers("pagerduty", raw))
        assert again.json()["alerts"][0]["acknowledged"] is False
        assert (await incident.query("status"))["acknowledged_by"] == "Jane Doe (via pagerduty)"
    await incident.terminate("test over")


async def test_an_alert_queued_for_a_run_that_ended_starts_the_next_one(receiver, client, task_queue, vercel,
                                                                        monkeypatch):
    """The receiver trusts a run it saw open for a moment (a storm asks Temporal a few times a second,
    not per delivery). If that run ended meanwhile, the rollback alert queued for it is not lost: the
    forwarder starts what the alert's decision asked for, a new rollback carrying that alert."""
    import starter.webhook as webhook
    from tests.receiver import runs_of

    monkeypatch.setattr(webhook, "OPEN_RUN_TTL_SECONDS", 600.0)  # the moment, stretched for the test
    hook = receiver(policy={"watch_after_rollback": "PT0S"})
    http = hook.asgi()
    first = client.get_workflow_handle(hook.workflow_id, result_type=AppRollbackResult)
    async with running_worker(client, hook.config, task_queue):
        assert (await http.post("/alerts/generic", json=FIRING, headers=AUTH)).json()["alerts"][0]["started"]
        assert (await first.result()).outcome == "rolled_back"  # ended; the receiver still thinks it open
        again = await http.post("/alerts/generic", json={**FIRING, "fingerprint": "a2", "summary": "still 5xx"},
                                headers=AUTH)
        (answer,) = again.json()["alerts"]
        assert answer["attached"] and answer["started"]

        async def successor_started() -> bool:
            return await runs_of(client, hook.service) == 2

        await assert_eventually(successor_started, message="a new rollback started for the queued alert")
        second = client.get_workflow_handle(hook.workflow_id, result_type=AppRollbackResult)
        status = await wait_for_phase(second, "awaiting_approval")  # through the cooldown like any other
        assert any(e.kind.value == "signal" and "still 5xx" in e.message for e in status.timeline)
        await second.cancel()
    assert vercel.count("POST", "/rollback/") == 1
