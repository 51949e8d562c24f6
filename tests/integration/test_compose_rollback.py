"""Compose-managed services: the image is pinned and `docker-compose up -d --no-deps` recreates
the one service, on the real engine with Debian's docker-compose."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from temporalio.client import WorkflowFailureError

from activities.docker import DeployLedger
from starter import engines
from tests.conftest import running_worker, unavailable
from workflows import AppRollbackWorkflow
from workflows.models import AppRollbackInput, AppRollbackResult

pytestmark = pytest.mark.docker


@pytest.fixture
def compose_site(docker_engine, write_config, tmp_path):
    if not shutil.which("docker-compose"):
        unavailable("docker-compose is not installed: apt-get install docker-compose")
    project, port = f"rb{uuid.uuid4().hex[:8]}", engines.free_port()
    compose_file = tmp_path / "docker-compose.yml"
    compose_file.write_text(yaml.safe_dump({"services": {"web": {
        "image": "${WEB_IMAGE:-demo-web:v2}", "network_mode": "host", "init": True,
        "environment": {"PORT": str(port)}}}}))

    def up(image: str) -> None:
        env = {**os.environ, "DOCKER_HOST": docker_engine.address, "WEB_IMAGE": image}
        subprocess.run(["docker-compose", "-p", project, "-f", str(compose_file), "up", "-d"], env=env, check=True,
                       capture_output=True)

    config = write_config({"web": {
        "app": {"provider": "compose", "compose": {"project": project, "service": "web", "file": str(compose_file),
                                                   "image_env": "WEB_IMAGE", "docker_host": docker_engine.address}},
        "health": {"url": f"http://127.0.0.1:{port}/health", "version_url": f"http://127.0.0.1:{port}/version",
                   "consecutive_checks": 2, "interval_seconds": 0.3, "timeout_seconds": 1}}})
    up("demo-web:v1")
    DeployLedger.of(config.config, "web").record(docker_engine.images["v1"], "demo-web:v1")
    up("demo-web:v2")

    def running():
        labels = [f"com.docker.compose.project={project}", "com.docker.compose.service=web"]
        (container,) = docker_engine.client.containers.list(filters={"label": labels})
        return container

    yield config, running, port
    subprocess.run(["docker-compose", "-p", project, "-f", str(compose_file), "down"], capture_output=True,
                   env={**os.environ, "DOCKER_HOST": docker_engine.address})


async def test_compose_service_rolls_back_to_the_previous_image(client, task_queue, compose_site, docker_engine):
    config, running, port = compose_site
    async with running_worker(client, config, task_queue):
        result = await client.execute_workflow(
            AppRollbackWorkflow.run, AppRollbackInput(service="web"), id=f"wf-{uuid.uuid4()}",
            task_queue=task_queue, result_type=AppRollbackResult)
    assert result.outcome == "rolled_back"
    assert running().attrs["Image"] == docker_engine.images["v1"]
    assert httpx.get(f"http://127.0.0.1:{port}/version").text.strip() == "v1"


async def test_compose_unhealthy_target_goes_back(client, task_queue, compose_site, docker_engine):
    config, running, port = compose_site
    async with running_worker(client, config, task_queue):
        with pytest.raises(WorkflowFailureError) as failure:
            await client.execute_workflow(
                AppRollbackWorkflow.run, AppRollbackInput(service="web", target="demo-web:v3-broken"),
                id=f"wf-{uuid.uuid4()}", task_queue=task_queue)
    assert "failed and was undone" in str(failure.value.cause)
    assert running().attrs["Image"] == docker_engine.images["v2"]
    assert httpx.get(f"http://127.0.0.1:{port}/version").text.strip() == "v2"


async def test_a_second_compose_rollback_never_puts_the_bad_image_back(client, task_queue, compose_site,
                                                                       docker_engine):
    from tests.helpers import assert_redeploy_waits_for_approval, roll_back_twice

    config, running, port = compose_site
    _, refused = await roll_back_twice(client, task_queue, config, "web")
    assert "no earlier image recorded" in refused
    serving = running().id

    def unchanged() -> None:
        assert running().id == serving and running().attrs["Image"] == docker_engine.images["v1"]
        assert httpx.get(f"http://127.0.0.1:{port}/version").text.strip() == "v1"

    unchanged()
    await assert_redeploy_waits_for_approval(client, task_queue, config, "web", docker_engine.images["v2"], unchanged)
