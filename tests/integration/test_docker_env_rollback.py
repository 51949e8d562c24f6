"""Environment rollback of a plain Docker container on the real engine: the env it runs with
changes only by recreating it, and `docker inspect` must show the restored variables."""

from __future__ import annotations

import uuid

import pytest
from temporalio.client import WorkflowFailureError

from activities.docker import KEY_LABEL, recreate
from starter import engines
from tests.conftest import running_worker
from workflows import EnvDiffWorkflow, EnvRollbackWorkflow
from workflows.models import EnvDiff, EnvRestoreInput, EnvRestoreResult, ServiceRef

pytestmark = pytest.mark.docker


def own_env(container) -> dict[str, str]:
    container.reload()
    pairs = [item.partition("=") for item in container.attrs["Config"]["Env"]]
    return {k: v for k, _, v in pairs if k != "PATH"}


@pytest.fixture
def web(docker_engine, write_config):
    name, port = f"envweb-{uuid.uuid4().hex[:8]}", engines.free_port()
    config = write_config({"web": {
        "app": {"provider": "docker", "docker": {"container": name, "docker_host": docker_engine.address,
                                                 "stop_timeout": 2}},
        "health": {"url": f"http://127.0.0.1:{port}/health", "consecutive_checks": 2, "interval_seconds": 0.3,
                   "timeout_seconds": 1}}})
    return docker_engine, config, name, port


def start(engine, name: str, env: dict[str, str]):
    return engine.client.containers.run(engine.images["v1"], name=name, detach=True, network_mode="host", init=True,
                                        environment=env, labels={"io.rollback.test": "1"})


def redeploy_with(engine, name: str, env: dict[str, str]) -> None:
    """What a person's `docker run` with other -e flags amounts to: a new container, new env."""
    key = uuid.uuid4().hex
    recreate(engine.client, name, engine.client.containers.get(name).attrs["Image"], aside_name=f"{name}-old-{key[:6]}",
             labels={KEY_LABEL: key}, env=env, settle_seconds=0.5)


async def test_restore_recreates_the_container_with_the_recorded_env(client, task_queue, web):
    engine, config, name, port = web
    good = {"PORT": str(port), "FEATURE": "v1", "API_TOKEN": f"tok-{uuid.uuid4().hex}"}
    start(engine, name, good)
    async with running_worker(client, config, task_queue):
        recorded = await client.execute_workflow(EnvDiffWorkflow.run, ServiceRef(service="web"),
                                                 id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=EnvDiff)
        assert recorded.current.healthy, recorded
        redeploy_with(engine, name, {"PORT": str(port), "FEATURE": "v2", "EXTRA": "1"})
        result = await client.execute_workflow(EnvRollbackWorkflow.run, EnvRestoreInput(service="web"),
                                               id=f"wf-{uuid.uuid4()}", task_queue=task_queue,
                                               result_type=EnvRestoreResult)
    assert result.outcome == "rolled_back", result.message
    assert (result.diff.added, result.diff.removed, result.diff.changed) == (["EXTRA"], ["API_TOKEN"], ["FEATURE"])
    container = engine.client.containers.get(name)
    assert own_env(container) == good  # docker inspect: the recorded variables, EXTRA gone
    assert container.status == "running" and container.id[:12] == result.deployment


async def test_unhealthy_env_is_undone_by_recreating_with_the_replaced_values(client, task_queue, web):
    engine, config, name, port = web
    wrong_port = engines.free_port()
    start(engine, name, {"PORT": str(wrong_port), "FEATURE": "v0"})  # listens where the health check is not
    async with running_worker(client, config, task_queue):
        old = await client.execute_workflow(EnvDiffWorkflow.run, ServiceRef(service="web"), id=f"wf-{uuid.uuid4()}",
                                            task_queue=task_queue, result_type=EnvDiff)
        assert old.current.healthy is False
        now = {"PORT": str(port), "FEATURE": "v1"}
        redeploy_with(engine, name, now)
        with pytest.raises(WorkflowFailureError) as failure:
            await client.execute_workflow(EnvRollbackWorkflow.run,
                                          EnvRestoreInput(service="web", to=old.current.deployment),
                                          id=f"wf-{uuid.uuid4()}", task_queue=task_queue)
    assert "failed and was undone" in str(failure.value.cause)
    container = engine.client.containers.get(name)
    assert own_env(container) == now and container.status == "running"
