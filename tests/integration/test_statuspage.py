"""Status page updates through the Statuspage contract server."""

from __future__ import annotations

import uuid
from pathlib import Path

from temporalio.testing import ActivityEnvironment

from activities.statuspage import StatuspageActivities
from tests.conftest import running_worker
from tests.contract.vercel import realistic
from tests.integration.test_vercel_rollback import vercel_service
from workflows import AppRollbackWorkflow
from workflows.models import AppRollbackInput, AppRollbackResult, StatusPageRequest


def with_statuspage(service: dict, fake) -> dict:
    return {**service, "notify": {"statuspage": {"page_id": fake.page_id, "api_key_env": "TEST_STATUSPAGE_KEY",
                                                 "component_id": "cmp_web", "api_url": fake.url}}}


async def test_rollback_opens_and_resolves_one_incident(client, task_queue, vercel, statuspage, write_config,
                                                        monkeypatch):
    realistic(vercel)
    monkeypatch.setenv("TEST_VERCEL_TOKEN", vercel.token)
    config = write_config({"shop": with_statuspage(vercel_service(vercel), statuspage)})
    async with running_worker(client, config, task_queue):
        result = await client.execute_workflow(
            AppRollbackWorkflow.run, AppRollbackInput(service="shop"), id=f"wf-{uuid.uuid4()}",
            task_queue=task_queue, result_type=AppRollbackResult)
    assert result.outcome == "rolled_back"
    (incident,) = statuspage.incidents.values()
    assert [u["status"] for u in incident["incident_updates"]] == ["identified", "resolved"]
    assert incident["status"] == "resolved"
    # down while we roll back, operational once verified (the component starts operational, so the
    # end state alone would prove nothing)
    assert statuspage.component_history["cmp_web"] == ["partial_outage", "operational"]
    assert statuspage.components["cmp_web"] == "operational"


async def test_retry_after_a_crash_updates_the_same_incident(statuspage, write_config, monkeypatch):
    config = write_config({"web": with_statuspage(
        {"app": {"provider": "docker", "docker": {"container": "x"}}, "health": {"url": "http://127.0.0.1:9/h"}},
        statuspage)})
    activities = StatuspageActivities(config)
    environment = ActivityEnvironment()
    opened = await environment.run(activities.post, StatusPageRequest(
        service="web", key="wf/run", name="web down", status="identified", body="rolling back"))
    # the worker died after creating the incident but before recording it
    for state in Path(config.config.state_dir, "statuspage").glob("*.json"):
        state.unlink()
    again = await environment.run(activities.post, StatusPageRequest(
        service="web", key="wf/run", name="web down", status="resolved", body="fixed"))
    assert again == opened and len(statuspage.incidents) == 1
    assert statuspage.incidents[opened]["status"] == "resolved"


def test_contract_refuses_a_create_without_a_name(statuspage):
    import httpx

    auth = {"Authorization": f"OAuth {statuspage.api_key}"}
    url = f"{statuspage.url}/pages/{statuspage.page_id}/incidents"
    nameless = httpx.post(url, json={"incident": {"status": "investigating", "body": "?"}}, headers=auth)
    assert nameless.status_code == 422 and nameless.json() == {"error": ["Name can't be blank"]}
    assert statuspage.incidents == {}
    named = httpx.post(url, json={"incident": {"name": "web down", "status": "investigating"}}, headers=auth)
    assert named.status_code == 201 and named.json()["name"] == "web down"
