"""Replay vs. re-fire, across receiver restarts: a retried delivery is a replay and starts
nothing; the same alert firing again after it resolved (new startsAt) is a new occurrence
that goes through cooldown like any other, so the second automatic rollback waits for approval."""

from __future__ import annotations

import json

from tests.conftest import running_worker
from tests.helpers import assert_eventually, wait_for_phase
from tests.receiver import receiver, runs_of, signed_headers  # noqa: F401 - receiver is a fixture
from tests.unit.test_alerts import golden
from workflows.models import AppRollbackResult

FIRST_START = b"2026-11-25T10:00:00.000Z"
AGAIN_START = b"2026-11-25T11:30:00.000Z"


def alertmanager(status: str, starts_at: bytes = FIRST_START) -> bytes:
    raw = golden("alertmanager_firing.json").replace(FIRST_START, starts_at)
    if status == "resolved":
        body = json.loads(raw)
        body["status"] = body["alerts"][0]["status"] = "resolved"
        body["alerts"][0]["endsAt"] = "2026-11-25T10:20:00.000Z"
        raw = json.dumps(body).encode()
    return raw


async def post(http, raw: bytes):
    return await http.post("/alerts/alertmanager", content=raw, headers=signed_headers("alertmanager", raw))


async def test_retry_is_a_replay_and_refire_is_new_across_restarts(receiver, client, task_queue, vercel):
    # a service rule: the workflow reads the service's config (rules included) inside its sandbox
    rule = {"name": "shop-errors", "matchers": ['alertname="HighErrorRate"', 'severity=~"critical|page"'],
            "action": "rollback"}
    hook = receiver(policy={"watch_after_rollback": "PT0S"}, service_alerts={"rules": [rule]})
    first_run = client.get_workflow_handle(hook.workflow_id, result_type=AppRollbackResult)
    async with running_worker(client, hook.config, task_queue):
        async with hook.http() as http:
            first = await post(http, alertmanager("firing"))
            assert first.status_code == 202 and first.json()["alerts"][0]["started"], first.text
            assert first.json()["alerts"][0]["rule"] == "shop-errors"
        async with hook.http() as http:  # restarted: Alertmanager retries (or repeats) the same group
            retry = await post(http, alertmanager("firing"))
            assert retry.status_code == 200 and retry.json() == {"accepted": True, "duplicate": True,
                                                                 "started": False}
            assert (await first_run.result()).outcome == "rolled_back"
            resolved = await post(http, alertmanager("resolved"))
            assert resolved.status_code == 202 and resolved.json()["alerts"][0]["action"] == "resolve"

            async def visible() -> bool:  # the cooldown counts the first rollback through visibility
                return await runs_of(client, hook.service) == 1

            await assert_eventually(visible, message="first rollback listed")
        async with hook.http() as http:  # restarted again
            assert (await post(http, alertmanager("resolved"))).json()["duplicate"] is True
            again = await post(http, alertmanager("firing", AGAIN_START))
            assert again.status_code == 202, again.text
            (alert,) = again.json()["alerts"]
            assert alert["action"] == "rollback" and alert["rule"] == "shop-errors"
            assert alert["started"]  # the run itself finds the first rollback in its cooldown (below)
            assert (await post(http, alertmanager("firing", AGAIN_START))).json()["duplicate"] is True
        second_run = client.get_workflow_handle(hook.workflow_id, result_type=AppRollbackResult)
        status = await wait_for_phase(second_run, "awaiting_approval")
        assert any("cooldown" in e.message for e in status.timeline)
        started = next(e for e in status.timeline if e.kind.value == "started")
        assert started.data["rule"] == "shop-errors"  # the timeline names the rule
        await second_run.cancel()

        async def two_runs() -> bool:
            return await runs_of(client, hook.service) == 2

        await assert_eventually(two_runs, message="two runs: the first and the re-fire's")
    assert vercel.count("POST", "/rollback/") == 1  # one rollback executed; the second waits for a person


async def test_firing_again_after_resolved_with_the_same_starts_at_is_new(receiver, client):
    hook = receiver()
    http = hook.asgi()
    assert (await post(http, alertmanager("firing"))).json()["alerts"][0]["started"]
    assert (await post(http, alertmanager("firing"))).json()["duplicate"] is True
    assert (await post(http, alertmanager("resolved"))).json()["alerts"][0]["attached"] is True
    again = await post(hook.asgi(), alertmanager("firing"))  # and after a restart
    assert again.status_code == 202 and again.json()["alerts"][0]["attached"] is True
    await client.get_workflow_handle(hook.workflow_id).terminate("test over")


async def test_a_datadog_monitor_firing_again_after_its_recovery_is_new(receiver, client):
    """A template that puts $ALERT_ID (the monitor, the same every time) in `id`: the recovery must
    end the firing's replay record, or the monitor's next trigger is answered as a replay for a day."""
    hook = receiver()
    http = hook.asgi()

    async def notify(transition: str):
        raw = json.dumps({"id": "1234", "title": f"[{transition} on {{service:shop}}] Checkout 5xx rate",
                          "alert_transition": transition, "alert_priority": "P1", "tags": "service:shop",
                          "error_rate": "0.3"}).encode()
        return await http.post("/alerts/datadog", content=raw, headers=signed_headers("datadog", raw))

    assert (await notify("Triggered")).status_code == 202
    assert (await notify("Triggered")).json()["duplicate"] is True  # the same notice again: a replay
    recovered = await notify("Recovered")
    assert recovered.status_code == 202 and recovered.json()["alerts"][0]["status"] == "resolved"
    again = await notify("Triggered")
    assert again.status_code == 202 and "duplicate" not in again.json(), again.text
    await client.get_workflow_handle(hook.workflow_id).terminate("test over")
