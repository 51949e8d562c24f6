"""The whole alert path with the real monitoring stack: Debian's Prometheus scrapes the demo
app, its rule fires, Debian's Alertmanager posts to our receiver, the receiver starts the app
rollback, the container goes back to v1, the error rate drops, Alertmanager sends `resolved`,
and the workflow's timeline shows every step."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml

from activities.docker import DeployLedger, deploy
from starter import engines
from starter.start import app_rollback_id
from starter.webhook import create_app
from tests.conftest import running_worker, unavailable
from tests.integration.test_docker_rollback import docker_service
from workflows.models import AppRollbackResult

pytestmark = pytest.mark.docker


async def test_prometheus_alert_rolls_back_and_resolves(client, task_queue, docker_engine, write_config, tmp_path,
                                                        monkeypatch):
    service = f"demo-{uuid.uuid4().hex[:6]}"
    app_port, prom_port, am_port, hook_port = (engines.free_port() for _ in range(4))

    # the demo app: v1, then a v2 whose /metrics says 27 % errors
    docker_engine.client.containers.run(docker_engine.images["v1"], name=service, detach=True, network_mode="host",
                                        init=True, environment={"PORT": str(app_port)},
                                        labels={"io.rollback.test": "1"})
    config = write_config({service: {
        **docker_service(docker_engine, service, app_port),
        "policy": {"watch_after_rollback": "PT90S"},
        "alert_match": {"service": service},
    }})
    raw = yaml.safe_load(config._path.read_text())
    raw["webhooks"] = {"sources": {"alertmanager": {"bearer_env": "TEST_AM_BEARER"}}}
    config._path.write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("TEST_AM_BEARER", "am-e2e-token")
    ledger = DeployLedger.of(config.config, service)
    ledger.record(docker_engine.images["v1"], "demo-web:v1")
    deploy(docker_engine.client, service, "demo-web:v2", ledger)

    receiver = uvicorn.Server(uvicorn.Config(create_app(client, config, task_queue), host="127.0.0.1",
                                             port=hook_port, log_level="warning"))
    receiver.install_signal_handlers = lambda: None
    serving = asyncio.create_task(receiver.serve())
    try:
        processes = engines.start_monitoring(
            tmp_path / "monitoring", app_port=app_port, service=service, bearer_token="am-e2e-token",
            webhook_url=f"http://127.0.0.1:{hook_port}/alerts/alertmanager", prometheus_port=prom_port,
            alertmanager_port=am_port)
    except engines.EngineError as exc:
        receiver.should_exit = True
        await serving
        unavailable(str(exc))
    handle = client.get_workflow_handle(app_rollback_id(service), result_type=AppRollbackResult)
    try:
        async with running_worker(client, config, task_queue):
            result = None
            for _ in range(180):  # the alert fires, the rollback runs, the alert resolves
                try:
                    description = await handle.describe()
                    if description.status.name != "RUNNING":
                        result = await handle.result()
                        break
                except Exception:  # noqa: BLE001 - not started yet
                    pass
                await asyncio.sleep(0.5)
    finally:
        for process in processes:
            process.stop()
        receiver.should_exit = True
        await serving
    assert result is not None, (tmp_path / "monitoring" / "alertmanager.log").read_text()[-2000:]
    assert result.outcome == "rolled_back"
    assert docker_engine.client.containers.get(service).attrs["Image"] == docker_engine.images["v1"]
    assert "demo_error_ratio{version=\"v1\"}" in httpx.get(f"http://127.0.0.1:{app_port}/metrics").text
    messages = [e.message for e in result.timeline]
    started = next(e for e in result.timeline if e.kind.value == "started")
    assert started.actor == "webhook:alertmanager" and started.data["rule"].startswith("error rate")
    assert any(m.startswith("firing alert from alertmanager") for m in messages)
    assert any("rolled back" in m or "now serves" in m for m in messages)
    assert any(m.startswith("resolved alert from alertmanager") for m in messages)
    assert "the alert resolved after the rollback" in messages
