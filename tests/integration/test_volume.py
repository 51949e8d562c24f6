"""Docker named volumes on the real engine: a verified tar of the volume, then a restore into a
new volume the container is recreated with, the old volume and container kept."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
from temporalio.client import WorkflowFailureError

from starter import engines
from tests.conftest import running_worker
from tests.helpers import wait_for_phase
from tests.test_cli import cli
from tests.integration.test_docker_rollback import docker_service
from workflows import VolumeBackupWorkflow, VolumeRestoreWorkflow
from workflows.models import ApprovalInput, VolumeInput, VolumeManifest, VolumeRestoreInput, VolumeRestoreResult

pytestmark = pytest.mark.docker


@pytest.fixture
def app_with_volume(docker_engine, write_config):
    client = docker_engine.client
    name, volume, port = f"vol-{uuid.uuid4().hex[:8]}", f"data-{uuid.uuid4().hex[:8]}", engines.free_port()
    client.volumes.create(volume)
    container = client.containers.run(docker_engine.images["v1"], name=name, detach=True, network_mode="host",
                                      init=True, environment={"PORT": str(port)}, labels={"io.rollback.test": "1"},
                                      volumes={volume: {"bind": "/data", "mode": "rw"}})
    container.exec_run(["sh", "-c", "mkdir -p /data/uploads && echo original > /data/uploads/a.txt && "
                                    "echo config > /data/settings"])
    config = write_config({"web": docker_service(docker_engine, name, port)})
    return client, name, volume, config


def read(client, container: str, path: str) -> str:
    result = client.containers.get(container).exec_run(["cat", path])
    return result.output.decode().strip() if result.exit_code == 0 else f"<exit {result.exit_code}>"


async def backup_volume(client, task_queue: str, volume: str) -> VolumeManifest:
    return await client.execute_workflow(VolumeBackupWorkflow.run, VolumeInput(service="web", volume=volume),
                                         id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=VolumeManifest)


def volume_of(client, container: str) -> str:
    (mount,) = [m for m in client.containers.get(container).attrs["Mounts"] if m["Type"] == "volume"]
    return mount["Name"]


async def test_volume_backup_damage_restore_keeps_the_old_volume(client, task_queue, app_with_volume):
    docker, name, volume, config = app_with_volume
    async with running_worker(client, config, task_queue):
        manifest = await backup_volume(client, task_queue, volume)
        assert manifest.verified and manifest.files >= 4 and Path(manifest.archive).stat().st_size == manifest.size_bytes
        docker.containers.get(name).exec_run(["sh", "-c", "echo corrupted > /data/uploads/a.txt; rm /data/settings"])
        handle = await client.start_workflow(
            VolumeRestoreWorkflow.run, VolumeRestoreInput(service="web", source=manifest.backup_id),
            id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=VolumeRestoreResult)
        await wait_for_phase(handle, "awaiting_approval", timeout=30)
        assert volume_of(docker, name) == volume  # nothing before the approval
        await handle.execute_update("approve", ApprovalInput(approver="ops", reason="uploads corrupted"))
        result = await handle.result()
    assert result.outcome == "restored", result.message
    assert volume_of(docker, name) == result.new_volume != volume
    assert read(docker, name, "/data/uploads/a.txt") == "original" and read(docker, name, "/data/settings") == "config"
    aside = docker.containers.get(result.details["aside_name"])  # the previous container, stopped, old volume
    assert aside.status == "exited" and volume_of(docker, aside.name) == volume
    docker.volumes.get(volume)  # kept
    assert docker.volumes.get(result.new_volume).attrs["Labels"]["io.rollback.restored-from"] == manifest.backup_id


async def test_corrupt_volume_backup_is_refused_before_anything_changes(client, task_queue, app_with_volume):
    docker, name, volume, config = app_with_volume
    async with running_worker(client, config, task_queue):
        manifest = await backup_volume(client, task_queue, volume)
        listed = await asyncio.to_thread(cli, "volume", "list", "web", "--config", str(config._path), "--json")
        assert [m["backup_id"] for m in json.loads(listed.stdout)] == [manifest.backup_id]
        archive = Path(manifest.archive)
        archive.write_bytes(archive.read_bytes()[: manifest.size_bytes // 2])  # truncated
        with pytest.raises(WorkflowFailureError) as failure:
            await client.execute_workflow(
                VolumeRestoreWorkflow.run, VolumeRestoreInput(service="web", source=manifest.backup_id),
                id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=VolumeRestoreResult)
        with pytest.raises(WorkflowFailureError, match="Workflow execution failed") as unknown:
            await client.execute_workflow(
                VolumeRestoreWorkflow.run, VolumeRestoreInput(service="web", source="no-such-backup"),
                id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=VolumeRestoreResult)
    assert "does not match its sha256; nothing was changed" in str(failure.value.cause.cause)
    assert "no volume backup 'no-such-backup'" in str(unknown.value.cause.cause)
    assert volume_of(docker, name) == volume and read(docker, name, "/data/settings") == "config"


async def test_a_volume_the_container_does_not_mount_is_a_clear_error(client, task_queue, app_with_volume):
    docker, name, volume, config = app_with_volume
    async with running_worker(client, config, task_queue):
        with pytest.raises(WorkflowFailureError) as failure:
            await client.execute_workflow(
                VolumeBackupWorkflow.run, VolumeInput(service="web", volume="other"), id=f"wf-{uuid.uuid4()}",
                task_queue=task_queue, result_type=VolumeManifest)
    assert f"mounts no volume 'other' (its volumes: {volume})" in str(failure.value.cause.cause)


async def test_unhealthy_app_on_the_restored_volume_is_put_back(client, task_queue, docker_engine, app_with_volume,
                                                                 write_config):
    docker, name, volume, _ = app_with_volume
    service = docker_service(docker_engine, name, engines.free_port())  # a health URL nothing answers
    service["health"].update(consecutive_checks=1, interval_seconds=0.1, timeout_seconds=0.5)
    config = write_config({"web": service}, name="unhealthy.yaml")
    async with running_worker(client, config, task_queue):
        manifest = await backup_volume(client, task_queue, volume)
        handle = await client.start_workflow(
            VolumeRestoreWorkflow.run, VolumeRestoreInput(service="web", source=manifest.backup_id),
            id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=VolumeRestoreResult)
        await wait_for_phase(handle, "awaiting_approval", timeout=30)
        await handle.execute_update("approve", ApprovalInput(approver="ops", reason="try it"))
        result = await handle.result()
    assert result.outcome == "compensated" and "previous container was put back" in result.message
    container = docker.containers.get(name)
    assert container.status == "running" and volume_of(docker, name) == volume
