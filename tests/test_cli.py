"""The `rollback` CLI as a person runs it: a subprocess against the real dev server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from starter import engines
from starter.start import app_rollback_id
from tests.conftest import running_worker
from tests.contract.vercel import realistic
from tests.helpers import wait_for_phase
from tests.integration.test_vercel_rollback import vercel_service
from workflows import AppRollbackWorkflow
from workflows.models import AppRollbackInput, AppRollbackResult, ApprovalInput

ROLLBACK = str(Path(sys.executable).parent / "rollback")


def cli(*args: str, address: str | None = None, task_queue: str | None = None, extra_env: dict | None = None,
        timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
    if address:
        env["TEMPORAL_ADDRESS"] = address
    if task_queue:
        env["TEMPORAL_TASK_QUEUE"] = task_queue
    env.update(extra_env or {})
    return subprocess.run([ROLLBACK, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, fragment: str) -> None:
    assert proc.returncode == code, proc
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert fragment in lines[0]


def test_unreachable_temporal_is_one_line():
    proc = cli("list", address=f"127.0.0.1:{engines.free_port()}")
    assert_one_line_error(proc, 1, "cannot reach the Temporal server at 127.0.0.1:")


def test_bad_arguments_are_one_line():
    assert_one_line_error(cli("app"), 2, "Missing argument 'SERVICE'")
    assert_one_line_error(cli("nosuchverb"), 2, "No such command")
    assert_one_line_error(cli("list", "--limit", "0"), 2, "--limit")


def test_typo_in_config_is_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("services:\n  web:\n    app: {provider: docker, docker: {container: web}}\n"
                    "    health: {url: 'http://127.0.0.1:1/h', consecutive_chekcs: 3}\n")
    assert_one_line_error(cli("worker", "--config", str(path)), 1,
                          "services.web.health.consecutive_chekcs: unknown field")
    assert_one_line_error(cli("config", "check", "--config", str(tmp_path / "missing.yaml")), 1,
                          "config file not found")


@pytest.mark.parametrize("kind, fragment", [
    ("directory", "is a directory, not a config file"),
    ("latin-1", "not UTF-8 text"),
    ("empty", "defines no services"),
    ("no services", "defines no services"),
])
def test_unusable_config_files_are_one_line(tmp_path, kind, fragment):
    path = tmp_path / "rollback.yaml"
    if kind == "directory":
        path.mkdir()
    elif kind == "latin-1":
        path.write_bytes("services:\n  caf\xe9: {}\n".encode("latin-1"))
    elif kind == "empty":
        path.write_text("")
    else:
        path.write_text("state_dir: var/state\n")
    for args in (("config", "check", "--config", str(path)), ("worker", "--config", str(path))):
        assert_one_line_error(cli(*args, timeout=30), 1, fragment)


async def test_unknown_service_is_refused_before_anything_starts(tmp_path, client, temporal_address, task_queue):
    path = tmp_path / "rollback.yaml"
    path.write_text("services:\n  web:\n    app: {provider: docker, docker: {container: web}}\n"
                    "    health: {url: 'http://127.0.0.1:1/h'}\n")
    env = {"ROLLBACK_CONFIG": str(path)}
    for args in (("app", "nosuch"), ("backup", "nosuch"), ("migration", "nosuch", "--to", "-1"),
                 ("restore", "nosuch", "--from", "x")):
        proc = await asyncio.to_thread(cli, *args, address=temporal_address, task_queue=task_queue, extra_env=env)
        assert_one_line_error(proc, 2, "unknown service 'nosuch'; the config defines: web")
    started = await client.count_workflows(f"TaskQueue = '{task_queue}'")
    assert started.count == 0


def test_missing_secret_stops_the_worker_with_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("services:\n  shop:\n    app: {provider: vercel, vercel: {project: p, token_env: SHOP_TOKEN_X}}\n"
                    "    health: {url: 'http://127.0.0.1:1/h'}\n")
    assert_one_line_error(cli("worker", "--config", str(path)), 1,
                          "service 'shop': environment variable SHOP_TOKEN_X is not set")


def test_listings_read_the_directories_the_worker_writes(tmp_path, monkeypatch):
    """`backups list` and `volume list` resolve directories through the same loader as the worker:
    relative ones against the config file, defaults under ROLLBACK_STATE_DIR (`up --data-dir`)."""
    from activities.backups import BackupActivities
    from activities.common import ConfigSource
    from activities.docker import DockerActivities
    from workflows.models import BackupManifest, VolumeManifest

    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    config = project / "rollback.yaml"
    config.write_text(
        "services:\n"
        "  own:\n"  # its own relative directories
        "    app: {provider: docker, docker: {container: own, volume_backup_dir: volumes}}\n"
        "    health: {url: 'http://127.0.0.1:9/health'}\n"
        "    database: {dsn_env: OWN_DSN, backup_dir: dumps}\n"
        "  plain:\n"  # the defaults, under the state directory
        "    app: {provider: docker, docker: {container: plain}}\n"
        "    health: {url: 'http://127.0.0.1:9/health'}\n"
        "    database: {dsn_env: PLAIN_DSN}\n")
    state = tmp_path / "data" / "state"
    monkeypatch.setenv("ROLLBACK_STATE_DIR", str(state))  # what `rollback up --data-dir data` sets
    monkeypatch.chdir(tmp_path)  # the worker's cwd is neither the config's folder nor the CLI's
    worker_config = ConfigSource(config)
    written = {}
    for service in ("own", "plain"):
        backups, volumes = BackupActivities(worker_config), DockerActivities(worker_config)
        backup = BackupManifest(backup_id=f"{service}-b1", service=service, database=service, archive="x.dump",
                                size_bytes=1, sha256="0" * 64, server_version="15", pg_dump_version="15",
                                created_at="2026-11-25T14:00:00Z", verified=True)
        backups.manifest_path(service, backup.backup_id).write_text(backup.model_dump_json())
        volume = VolumeManifest(backup_id=f"{service}-v1", service=service, volume="data", container=service,
                                mount_path="/data", archive="x.tar", size_bytes=1, sha256="0" * 64, files=1,
                                created_at="2026-11-25T14:00:00Z", verified=True)
        (volumes.volume_dir(service) / f"{volume.backup_id}.json").write_text(volume.model_dump_json())
        written[service] = (backups.backup_dir(service), volumes.volume_dir(service))
    assert written["own"] == (project / "dumps", project / "volumes")
    assert written["plain"] == (state / "backups" / "plain", state / "volume-backups" / "plain")

    environment = {"ROLLBACK_CONFIG": str(config), "ROLLBACK_STATE_DIR": str(state)}
    for service in ("own", "plain"):
        backups = cli("backups", "list", service, "--json", extra_env=environment, cwd=elsewhere)
        volumes = cli("volume", "list", service, "--json", extra_env=environment, cwd=elsewhere)
        assert [b["backup_id"] for b in json.loads(backups.stdout)] == [f"{service}-b1"], backups.stderr
        assert [v["backup_id"] for v in json.loads(volumes.stdout)] == [f"{service}-v1"], volumes.stderr


async def test_unknown_workflow_is_one_line(temporal_address):
    proc = await asyncio.to_thread(cli, "status", "no-such-rollback", address=temporal_address)
    assert_one_line_error(proc, 1, "no workflow with ID 'no-such-rollback'")


@pytest.fixture
def shop_config(vercel, write_config, monkeypatch):
    realistic(vercel)
    monkeypatch.setenv("TEST_VERCEL_TOKEN", vercel.token)
    return vercel, write_config({"shop": vercel_service(vercel, policy={"app_approval": "always"})})


async def start_waiting_for_approval(client, task_queue: str, workflow_id: str):
    """An app rollback of `shop` (policy: always ask) that has reached its approval checkpoint."""
    handle = await client.start_workflow(AppRollbackWorkflow.run, AppRollbackInput(service="shop"),
                                         id=workflow_id, task_queue=task_queue, result_type=AppRollbackResult)
    await wait_for_phase(handle, "awaiting_approval")
    return handle


async def test_status_reject_list_against_a_waiting_rollback(client, task_queue, temporal_address, shop_config):
    fake, config = shop_config
    workflow_id = f"wf-{uuid.uuid4()}"
    async with running_worker(client, config, task_queue):
        handle = await start_waiting_for_approval(client, task_queue, workflow_id)

        status = await asyncio.to_thread(cli, "status", workflow_id, "--json", address=temporal_address)
        assert status.returncode == 0, status.stderr
        state = json.loads(status.stdout)
        assert state["phase"] == "awaiting_approval" and state["waiting_for_approval"] == "app rollback"

        human = await asyncio.to_thread(cli, "status", workflow_id, address=temporal_address)
        assert "waiting for approval of: app rollback" in human.stdout and "approval_requested" in human.stdout

        listed = await asyncio.to_thread(cli, "list", "--service", "shop", "--json", address=temporal_address)
        rows = {row["workflow_id"]: row for row in json.loads(listed.stdout)}
        assert rows[workflow_id]["service"] == "shop" and rows[workflow_id]["type"] == "app"

        no_reason = await asyncio.to_thread(cli, "reject", workflow_id, address=temporal_address)
        assert no_reason.returncode == 2
        rejected = await asyncio.to_thread(cli, "reject", workflow_id, "--reason", "fix forward instead",
                                           "--as", "bob", address=temporal_address)
        assert rejected.returncode == 0, rejected.stderr
        assert rejected.stdout.startswith(f"rejected {workflow_id} as bob")
        result = await handle.result()
        late = await asyncio.to_thread(cli, "approve", workflow_id, "--reason", "too late", address=temporal_address)
    assert result.outcome == "rejected" and "bob" in result.message
    assert fake.count("POST", "") == 0 and fake.production["prj_shop"] == "dpl_badprodzzz"  # nothing acted
    assert late.returncode == 1 and "Traceback" not in late.stderr


async def test_approve_over_cli_then_rollback_finishes(client, task_queue, temporal_address, shop_config):
    fake, config = shop_config
    workflow_id = f"wf-{uuid.uuid4()}"
    async with running_worker(client, config, task_queue):
        handle = await start_waiting_for_approval(client, task_queue, workflow_id)
        assert fake.count("POST", "") == 0  # the approval really blocks the step
        empty = await asyncio.to_thread(cli, "approve", workflow_id, "--reason", " ", address=temporal_address)
        assert_one_line_error(empty, 1, "a reason is required")
        approved = await asyncio.to_thread(cli, "approve", workflow_id, "--reason", "checkout is down", "--as",
                                           "alice", address=temporal_address)
        assert approved.returncode == 0, approved.stderr
        assert approved.stdout.startswith(f"approved {workflow_id} as alice")
        result = await handle.result()
    assert result.outcome == "rolled_back" and fake.production["prj_shop"] == "dpl_goodprodzz"


async def test_the_same_app_rollback_run_again_right_after_asks_for_again(client, task_queue, temporal_address,
                                                                          shop_config):
    """`rollback app shop` re-run after the first one finished (a timeout, a second terminal) would
    go one more version back: it is refused, saying so, until --again or --to says it is meant."""
    fake, config = shop_config
    async with running_worker(client, config, task_queue):
        handle = await start_waiting_for_approval(client, task_queue, app_rollback_id("shop"))
        await handle.execute_update("approve", ApprovalInput(approver="alice", reason="checkout is down"))
        assert (await handle.result()).outcome == "rolled_back"
        posts = fake.count("POST", "")
        again = await asyncio.to_thread(cli, "app", "shop", address=temporal_address, task_queue=task_queue)
        assert_one_line_error(again, 1, "shop was rolled back 0 minute(s) ago, to ")
        assert "--again" in again.stderr and fake.count("POST", "") == posts  # nothing more changed
        planned = await asyncio.to_thread(cli, "app", "shop", "--dry-run", "--wait", address=temporal_address,
                                          task_queue=task_queue)
        assert planned.returncode == 0, planned.stderr  # a dry run is never in the way


async def test_cancel_while_waiting_changes_nothing(client, task_queue, temporal_address, shop_config):
    fake, config = shop_config
    workflow_id = f"wf-{uuid.uuid4()}"
    async with running_worker(client, config, task_queue):
        handle = await start_waiting_for_approval(client, task_queue, workflow_id)
        cancelled = await asyncio.to_thread(cli, "cancel", workflow_id, address=temporal_address)
        assert cancelled.returncode == 0, cancelled.stderr
        description = None
        for _ in range(50):
            description = await handle.describe()
            if description.status.name != "RUNNING":
                break
            await asyncio.sleep(0.2)
    assert description.status.name == "CANCELED"
    assert fake.count("POST", "") == 0


async def test_app_verb_waits_and_shows_progress(client, task_queue, temporal_address, vercel, write_config,
                                                 monkeypatch):
    realistic(vercel)
    monkeypatch.setenv("TEST_VERCEL_TOKEN", vercel.token)
    config = write_config({"shop": vercel_service(vercel)})
    async with running_worker(client, config, task_queue):
        proc = await asyncio.to_thread(cli, "app", "shop", "--wait", "--reason", "checkout 500s",
                                       address=temporal_address, task_queue=task_queue)
        again = await asyncio.to_thread(cli, "app", "shop", "--dry-run", "--wait", "--json",
                                        address=temporal_address, task_queue=task_queue)
    assert proc.returncode == 0, proc.stderr
    assert f"started {app_rollback_id('shop')}" in proc.stdout
    for step in ("assessed", "planned", "rolled_back", "verified", "ROLLED_BACK"):
        assert step in proc.stdout
    assert again.returncode == 0 and json.loads(again.stdout)["outcome"] == "dry_run"


async def test_a_failed_run_says_why_on_its_timeline(client, task_queue, temporal_address, shop_config):
    """A run that fails before changing anything ends with a `failed` event naming the cause, and
    `rollback status` shows it with phase failed."""
    from temporalio.client import WorkflowFailureError

    fake, config = shop_config
    workflow_id = f"wf-{uuid.uuid4()}"
    async with running_worker(client, config, task_queue):
        handle = await client.start_workflow(AppRollbackWorkflow.run, AppRollbackInput(service="shop", target="dpl_nope"),
                                             id=workflow_id, task_queue=task_queue)
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        status = await asyncio.to_thread(cli, "status", workflow_id, "--json", address=temporal_address)
        human = await asyncio.to_thread(cli, "status", workflow_id, address=temporal_address)
    assert status.returncode == 0, status.stderr
    state = json.loads(status.stdout)
    assert state["phase"] == "failed"
    assert state["timeline"][-1]["kind"] == "failed" and "dpl_nope" in state["timeline"][-1]["message"]
    assert "failed" in human.stdout and "dpl_nope" in human.stdout
