"""AppRollbackWorkflow against the real Docker engine: images v1 (healthy), v2 (27 % errors),
v3-broken (no /health)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest
from temporalio.client import WorkflowFailureError

from activities.docker import DeployLedger, deploy, select_from_ledger, version_of
from activities.state import SqliteStore
from starter import engines
from tests.conftest import running_worker
from tests.helpers import kinds, wait_for_phase
from workflows import AppRollbackWorkflow
from workflows.models import AppRollbackInput, AppRollbackResult, ApprovalInput, TargetRequest

pytestmark = pytest.mark.docker


def docker_service(engine, name: str, port: int, **extra) -> dict:
    return {
        "app": {"provider": "docker", "docker": {"container": name, "docker_host": engine.address, "stop_timeout": 2}},
        "health": {"url": f"http://127.0.0.1:{port}/health", "version_url": f"http://127.0.0.1:{port}/version",
                   "consecutive_checks": 2, "interval_seconds": 0.3, "timeout_seconds": 1},
        **extra,
    }


class Deployed:
    def __init__(self, engine, config, name: str, port: int):
        self.engine, self.config, self.name, self.port = engine, config, name, port

    def container(self):
        return self.engine.client.containers.get(self.name)

    def version(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.port}/version", timeout=2).text.strip()


@pytest.fixture
def make_deployed(docker_engine, write_config):
    """demo-web v1 deployed, then v2: what production looks like when someone calls us."""

    def make(policy: dict | None = None, deploy_as: str | None = None) -> Deployed:
        name, port = f"web-{uuid.uuid4().hex[:8]}", engines.free_port()
        config = write_config({"web": docker_service(docker_engine, name, port, **({"policy": policy} if policy else {}))})
        ledger = DeployLedger.of(config.config, "web")
        client = docker_engine.client
        client.containers.run(docker_engine.images["v1"], name=name, detach=True, network_mode="host", init=True,
                              environment={"PORT": str(port), "API_TOKEN": "s3cr3t-value"},
                              labels={"io.rollback.test": "1"})
        ledger.record(docker_engine.images["v1"], "demo-web:v1")
        deploy(client, name, deploy_as or "demo-web:v2", ledger)
        deployed = Deployed(docker_engine, config, name, port)
        return deployed

    return make


async def test_rolls_back_v2_to_v1_and_keeps_the_old_container(client, task_queue, make_deployed, docker_engine):
    site = make_deployed()
    assert site.version() == "v2"
    async with running_worker(client, site.config, task_queue):
        result = await client.execute_workflow(
            AppRollbackWorkflow.run, AppRollbackInput(service="web", reason="v2 errors"),
            id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=AppRollbackResult,
        )
    assert result.outcome == "rolled_back"
    container = site.container()
    assert container.attrs["Image"] == docker_engine.images["v1"]
    assert site.version() == "v1"
    # container-specific settings survive the recreate; image-derived ones come from v1
    assert container.labels["io.rollback.test"] == "1"
    assert f"PORT={site.port}" in container.attrs["Config"]["Env"]
    assert container.attrs["HostConfig"]["NetworkMode"] == "host"
    # the v2 container is kept aside, stopped: a way back
    aside = result.timeline[[e.kind.value for e in result.timeline].index("rolled_back")].data["details"]["aside_name"]
    old = docker_engine.client.containers.get(aside)
    assert old.attrs["Image"] == docker_engine.images["v2"] and old.status == "exited"
    assert {"assessed", "captured", "planned", "rolled_back", "verified", "resolved"} <= set(kinds(result.timeline))
    # artifacts: captured env is redacted, post-mortem renders the timeline
    artifacts = Path(result.artifact_dir)
    env_file = (artifacts / "container-env.txt").read_text()
    assert "API_TOKEN=***redacted***" in env_file and "s3cr3t-value" not in env_file
    assert "verified" in (artifacts / "postmortem.md").read_text()
    assert "s3cr3t-value" not in json.dumps(result.model_dump(mode="json"))


async def test_unhealthy_target_is_compensated_and_original_runs_again(client, task_queue, make_deployed, docker_engine):
    site = make_deployed()
    async with running_worker(client, site.config, task_queue):
        handle = await client.start_workflow(
            AppRollbackWorkflow.run, AppRollbackInput(service="web", target="demo-web:v3-broken"),
            id=f"wf-{uuid.uuid4()}", task_queue=task_queue,
        )
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        status = await handle.query(AppRollbackWorkflow.status)
    assert "failed and was undone" in str(failure.value.cause)
    assert "health endpoint answered HTTP 404" in str(failure.value.cause)
    assert site.container().attrs["Image"] == docker_engine.images["v2"]
    assert site.container().status == "running"
    assert site.version() == "v2"
    assert kinds(status.timeline)[-4:] == ["verification_failed", "compensating", "compensated", "failed"]
    assert "failed and was undone" in status.timeline[-1].message and status.phase.value == "failed"
    (postmortem,) = Path(site.config.config.artifact_dir).rglob("postmortem.md")
    assert "App rollback of web: compensated" in postmortem.read_text()


async def test_retagged_tag_does_not_change_the_target(client, task_queue, make_deployed, docker_engine):
    # deploy through a moving tag, as runbook 004 does: `shop:latest` was v1, then v2
    docker_engine.client.images.get(docker_engine.images["v2"]).tag("shop", "latest")
    site = make_deployed(deploy_as="shop:latest")
    async with running_worker(client, site.config, task_queue):
        result = await client.execute_workflow(
            AppRollbackWorkflow.run, AppRollbackInput(service="web"),
            id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=AppRollbackResult,
        )
    assert result.plan.target.id == docker_engine.images["v1"]
    assert site.container().attrs["Image"] == docker_engine.images["v1"]


async def test_dry_run_changes_nothing(client, task_queue, make_deployed, docker_engine):
    site = make_deployed()
    before = site.container().id
    async with running_worker(client, site.config, task_queue):
        result = await client.execute_workflow(
            AppRollbackWorkflow.run, AppRollbackInput(service="web", dry_run=True),
            id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=AppRollbackResult,
        )
    assert result.outcome == "dry_run"
    assert result.plan.current.id == docker_engine.images["v2"] and result.plan.target.id == docker_engine.images["v1"]
    assert result.plan.steps and result.plan.expected_downtime
    assert site.container().id == before and site.version() == "v2"


async def test_approval_blocks_the_rollback_until_approved(client, task_queue, make_deployed, docker_engine):
    site = make_deployed(policy={"app_approval": "always"})
    async with running_worker(client, site.config, task_queue):
        handle = await client.start_workflow(
            AppRollbackWorkflow.run, AppRollbackInput(service="web"),
            id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=AppRollbackResult,
        )
        status = await wait_for_phase(handle, "awaiting_approval")
        assert status.waiting_for_approval == "app rollback"
        assert site.container().attrs["Image"] == docker_engine.images["v2"]  # nothing happened yet
        decision = await handle.execute_update(AppRollbackWorkflow.approve,
                                               ApprovalInput(approver="alice", reason="v2 is on fire"))
        assert decision.approved and decision.approver == "alice"
        result = await handle.result()
    assert result.outcome == "rolled_back"
    assert site.container().attrs["Image"] == docker_engine.images["v1"]
    approved = next(e for e in result.timeline if e.kind.value == "approved")
    assert approved.actor == "alice" and "v2 is on fire" in approved.message


async def test_missing_container_is_a_clear_error_before_anything_changes(client, task_queue, docker_engine, write_config):
    config = write_config({"web": docker_service(docker_engine, "no-such-container", engines.free_port())})
    async with running_worker(client, config, task_queue):
        with pytest.raises(WorkflowFailureError) as failure:
            await client.execute_workflow(
                AppRollbackWorkflow.run, AppRollbackInput(service="web"),
                id=f"wf-{uuid.uuid4()}", task_queue=task_queue,
            )
    assert "container 'no-such-container' not found" in str(failure.value.cause.cause)


async def test_deploy_ledger_skips_images_rolled_back_from(tmp_path):
    ledger = DeployLedger(SqliteStore(tmp_path / "state.sqlite"), "web")
    ledger.record("sha256:a", "app:1")
    ledger.record("sha256:b", "app:2")
    ledger.record("sha256:b", "app:2")  # seen again: not a new deploy
    ledger.mark_bad("sha256:b")
    ledger.record("sha256:a", "app:1")
    entries = ledger.entries()
    assert [e["image_id"] for e in entries] == ["sha256:a", "sha256:b", "sha256:a"]
    assert [e["bad"] for e in entries] == [False, True, False]


async def test_default_target_skips_images_rolled_back_from(tmp_path, docker_engine):
    v1, v2, v3 = (docker_engine.images[v] for v in ("v1", "v2", "v3-broken"))
    ledger = DeployLedger(SqliteStore(tmp_path / "state.sqlite"), "web")
    for image_id, ref in ((v1, "demo-web:v1"), (v2, "demo-web:v2"), (v3, "demo-web:v3-broken")):
        ledger.record(image_id, ref)
    current = version_of(docker_engine.client, v3)
    request = TargetRequest(service="web", current=current)
    assert select_from_ledger(docker_engine.client, ledger, request, "web").id == v2  # the previous deploy
    ledger.mark_bad(v2)  # an earlier rollback moved away from v2
    chosen = select_from_ledger(docker_engine.client, ledger, request, "web")
    assert chosen.id == v1 and not chosen.rolled_back_from
    explicit = select_from_ledger(docker_engine.client, ledger, request.model_copy(update={"explicit": v2}), "web")
    assert explicit.id == v2 and explicit.rolled_back_from  # allowed, but the plan asks for approval


async def test_a_second_rollback_never_puts_the_bad_image_back(client, task_queue, make_deployed, docker_engine):
    from tests.helpers import assert_redeploy_waits_for_approval, roll_back_twice

    site = make_deployed()
    _, refused = await roll_back_twice(client, task_queue, site.config, "web")
    assert "no earlier image recorded" in refused and site.version() == "v1"
    serving = site.container().id

    def unchanged() -> None:
        assert site.container().id == serving and site.version() == "v1"

    unchanged()
    await assert_redeploy_waits_for_approval(client, task_queue, site.config, "web", docker_engine.images["v2"],
                                             unchanged)


def decoded_history(history) -> str:
    """Every payload of a workflow history, decoded: what anyone with UI access can read."""
    import base64

    texts: list[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            if "data" in node and "metadata" in node and isinstance(node["data"], str):
                texts.append(base64.b64decode(node["data"]).decode(errors="replace"))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(history.to_json()))
    return "\n".join(texts)


async def test_secret_canaries_stay_out_of_history_and_incident_files(client, task_queue, docker_engine,
                                                                      write_config, slack, monkeypatch, tmp_path):
    """Secrets under harmless names in the app's env, and the values of secrets the config names in
    the worker's env: no trace in any history payload or any file under the state and artifact
    dirs, and captured files are private to the worker's user."""
    name, port = f"web-{uuid.uuid4().hex[:8]}", engines.free_port()
    app_canaries = {
        "SLACK_HOOK": "https://hooks.slack.com/services/T0CANARY/B0CANARY/canaryslackpath1",
        "REDIS_URL": "redis://:canary-redis-pass@127.0.0.1:6379/0",
        "UPSTREAM": "https://deploy:canary-basic-pw@127.0.0.1:9/x",
        "AUTH_HEADER": "Bearer canarybearer0123456789",
        "GH": "ghp_canaryCANARYcanaryCANARY0123456789",
    }
    worker_canary = "canary-db-password-in-worker-env"
    monkeypatch.setenv("TEST_WEB_DSN", f"postgresql://app:{worker_canary}@127.0.0.1:1/web")
    service = docker_service(docker_engine, name, port, notify={"slack_webhook_env": "TEST_SLACK_WEBHOOK"},
                             kill_switches=[{"name": "X", "store": "postgres", "dsn_env": "TEST_WEB_DSN"}])
    config = write_config({"web": service})
    client_ = docker_engine.client
    client_.containers.run(docker_engine.images["v1"], name=name, detach=True, network_mode="host", init=True,
                           environment={"PORT": str(port), **app_canaries}, labels={"io.rollback.test": "1"})
    ledger = DeployLedger.of(config.config, "web")
    ledger.record(docker_engine.images["v1"], "demo-web:v1")
    deploy(client_, name, "demo-web:v2", ledger)
    async with running_worker(client, config, task_queue):
        handle = await client.start_workflow(AppRollbackWorkflow.run, AppRollbackInput(service="web"),
                                             id=f"wf-{uuid.uuid4()}", task_queue=task_queue,
                                             result_type=AppRollbackResult)
        result = await handle.result()
        history = await handle.fetch_history()
    assert result.outcome == "rolled_back"
    canaries = ["canaryslackpath1", "canary-redis-pass", "canary-basic-pw", "canarybearer0123456789",
                "ghp_canaryCANARY", worker_canary, "XXXXSECRETXXXX"]
    haystacks = {"history": decoded_history(history)}
    captured = 0
    # the protected env store keeps the app's variables on purpose (env rollback puts them back):
    # the one place they may be, private to the worker's user
    store = Path(config.config.state_dir) / "env" / "web" / "values"
    assert list(store.glob("*.json")), "the capture step recorded no environment"
    for root in (config.config.state_dir, config.config.artifact_dir):
        for path in Path(root).rglob("*"):
            if path.is_file() and path.parent == store:
                assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
            elif path.is_file():
                haystacks[str(path)] = path.read_text(errors="replace")
                if str(path).startswith(config.config.artifact_dir):
                    captured += 1
                    assert path.stat().st_mode & 0o077 == 0, f"{path} is readable by others"
    assert captured >= 5 and "container-env.txt" in " ".join(haystacks)
    leaks = [(where, canary) for where, text in haystacks.items() for canary in canaries if canary in text]
    assert leaks == []
    env_file = next(text for where, text in haystacks.items() if where.endswith("container-env.txt"))
    assert "REDIS_URL=redis://:***redacted***@127.0.0.1:6379/0" in env_file  # still useful to read
    assert f"PORT={port}" in env_file
