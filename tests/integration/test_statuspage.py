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


POST_IN_A_WORKER = """
import asyncio, sys
from pathlib import Path
from temporalio.testing import ActivityEnvironment
from activities.common import ConfigSource
from activities.statuspage import StatuspageActivities
from workflows.models import StatusPageRequest
request = StatusPageRequest(service="web", key="wf/run", name="web down", status="identified", body="rolling back")
asyncio.run(ActivityEnvironment().run(StatuspageActivities(ConfigSource(Path(sys.argv[1]))).post, request))
"""


async def test_retry_after_a_crash_updates_the_same_incident(statuspage, write_config, monkeypatch):
    import asyncio
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT

    config = write_config({"web": with_statuspage(
        {"app": {"provider": "docker", "docker": {"container": "x"}}, "health": {"url": "http://127.0.0.1:9/h"}},
        statuspage)})
    statuspage.create_delay = 8  # Statuspage has the incident; the worker has not heard back yet
    worker = subprocess.Popen([sys.executable, "-c", POST_IN_A_WORKER, str(config._path)], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        for _ in range(300):
            if statuspage.incidents or worker.poll() is not None:
                break
            await asyncio.sleep(0.05)
        assert len(statuspage.incidents) == 1 and worker.poll() is None
        worker.send_signal(signal.SIGKILL)  # the worker dies between the create and recording its id
        assert worker.wait(timeout=10) == -signal.SIGKILL
    finally:
        worker.kill()
    (opened,) = statuspage.incidents
    assert not list(Path(config.config.state_dir).glob("statuspage/*.json"))  # nothing was recorded
    statuspage.create_delay = 0
    again = await ActivityEnvironment().run(StatuspageActivities(config).post, StatusPageRequest(
        service="web", key="wf/run", name="web down", status="resolved", body="fixed"))
    assert again == opened and len(statuspage.incidents) == 1  # the retry found it: no second incident
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
