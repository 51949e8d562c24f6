"""Git revert + redeploy against a local bare repository and a deploy-hook server."""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass, field

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from temporalio.testing import ActivityEnvironment

from activities.git import GitActivities
from tests.conftest import running_worker
from tests.contract.server import serve
from tests.helpers import kinds
from workflows import AppRollbackWorkflow
from workflows.models import AppRollbackInput, AppRollbackResult, AppVersion, ExecuteRequest


def sh(*args: str, cwd=None) -> str:
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@dataclass
class Platform:
    """A tiny PaaS: the deploy hook deploys a commit; /health and /version show what runs."""

    serving: str = ""
    hooks: list[str] = field(default_factory=list)
    broken_deploys: set[int] = field(default_factory=set)  # 1-based hook calls whose deploy is unhealthy

    def app(self) -> Starlette:
        async def hook(request: Request):
            self.hooks.append(request.query_params["sha"])
            self.serving = request.query_params["sha"]
            return JSONResponse({"job": {"id": f"job{len(self.hooks)}", "state": "PENDING"}}, status_code=201)

        async def health(_: Request):
            if len(self.hooks) in self.broken_deploys:
                return JSONResponse({"status": "error", "error_rate": 0.5}, status_code=503)
            return JSONResponse({"status": "ok", "error_rate": 0.0})

        async def version(_: Request):
            return PlainTextResponse(self.serving)

        return Starlette(routes=[Route("/hook", hook, methods=["POST"]), Route("/health", health),
                                 Route("/version", version)])


@pytest.fixture
def repo(tmp_path):
    remote = tmp_path / "remote.git"
    sh("git", "init", "--quiet", "--bare", "--initial-branch=main", str(remote))
    seed = tmp_path / "seed"
    sh("git", "clone", "--quiet", str(remote), str(seed))
    sh("git", "config", "user.email", "dev@example.com", cwd=seed)
    sh("git", "config", "user.name", "dev", cwd=seed)
    commits = {}
    for name, content, schema in (("good", "v1", "2"), ("bad1", "v2", "3"), ("bad2", "v2.1", "3")):
        (seed / "app.txt").write_text(content + "\n")
        (seed / "SCHEMA_VERSION").write_text(schema + "\n")
        sh("git", "add", "-A", cwd=seed)
        sh("git", "commit", "--quiet", "-m", f"release {content}", cwd=seed)
        commits[name] = sh("git", "rev-parse", "HEAD", cwd=seed)
    sh("git", "push", "--quiet", "origin", "HEAD:main", cwd=seed)
    return remote, commits


@pytest.fixture
def platform(monkeypatch):
    fake = Platform()
    server = serve(fake.app())
    monkeypatch.setenv("TEST_DEPLOY_HOOK", server.url + "/hook")
    fake.url = server.url
    yield fake
    server.stop()


def git_service(remote, platform) -> dict:
    return {
        "app": {"provider": "git", "git": {"repo": str(remote), "branch": "main",
                                           "deploy_hook_url_env": "TEST_DEPLOY_HOOK", "schema_file": "SCHEMA_VERSION"}},
        "health": {"url": f"{platform.url}/health", "version_url": f"{platform.url}/version",
                   "consecutive_checks": 2, "interval_seconds": 0.2, "timeout_seconds": 1},
    }


async def test_revert_lands_on_the_remote_and_deploys_once(client, task_queue, repo, platform, write_config, tmp_path):
    remote, commits = repo
    config = write_config({"web": git_service(remote, platform)})
    async with running_worker(client, config, task_queue):
        result = await client.execute_workflow(
            AppRollbackWorkflow.run, AppRollbackInput(service="web", target=commits["good"], reason="v2 breaks login"),
            id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=AppRollbackResult,
        )
    assert result.outcome == "rolled_back"
    head = sh("git", "--git-dir", str(remote), "rev-parse", "main")
    assert sh("git", "--git-dir", str(remote), "diff", commits["good"], head) == ""  # tree is the good one
    assert sh("git", "--git-dir", str(remote), "rev-parse", f"{head}~1") == commits["bad2"]  # history kept
    assert "Rollback-Key: " in sh("git", "--git-dir", str(remote), "log", "-1", "--format=%B", head)
    assert platform.hooks == [head] and platform.serving == head
    assert result.plan.target.schema_version == "2"
    assert "verified" in kinds(result.timeline)


async def test_retried_execute_neither_reverts_nor_deploys_twice(repo, platform, write_config):
    remote, commits = repo
    activities = GitActivities(write_config({"web": git_service(remote, platform)}))
    current = AppVersion(provider="git", id=commits["bad2"])
    target = AppVersion(provider="git", id=commits["good"], label="good")
    request = ExecuteRequest(service="web", current=current, target=target, rollback_key="wf-1/run-1")
    environment = ActivityEnvironment()
    first = await environment.run(activities.execute, request)
    second = await environment.run(activities.execute, request)  # what a retry after a crash does
    assert first.details["revert_commit"] == second.details["revert_commit"]
    assert len(platform.hooks) == 1
    count = sh("git", "--git-dir", str(remote), "rev-list", "--count", "main")
    assert count == "4"  # three releases + one revert


async def test_target_not_in_history_is_refused(client, task_queue, repo, platform, write_config):
    from temporalio.client import WorkflowFailureError

    remote, _ = repo
    config = write_config({"web": git_service(remote, platform)})
    async with running_worker(client, config, task_queue):
        with pytest.raises(WorkflowFailureError) as failure:
            await client.execute_workflow(
                AppRollbackWorkflow.run, AppRollbackInput(service="web", target="deadbeef" * 5),
                id=f"wf-{uuid.uuid4()}", task_queue=task_queue,
            )
    assert "not found on main" in str(failure.value.cause.cause)
    assert platform.hooks == []


async def test_unhealthy_revert_is_undone_with_a_new_commit(client, task_queue, repo, platform, write_config):
    from temporalio.client import WorkflowFailureError

    remote, commits = repo
    platform.broken_deploys = {1}  # the revert deploys but does not come up healthy
    config = write_config({"web": git_service(remote, platform)})
    async with running_worker(client, config, task_queue):
        with pytest.raises(WorkflowFailureError) as failure:
            await client.execute_workflow(
                AppRollbackWorkflow.run, AppRollbackInput(service="web", target=commits["good"]),
                id=f"wf-{uuid.uuid4()}", task_queue=task_queue,
            )
    assert "failed and was undone" in str(failure.value.cause)
    head = sh("git", "--git-dir", str(remote), "rev-parse", "main")
    assert sh("git", "--git-dir", str(remote), "diff", commits["bad2"], head) == ""  # the pre-rollback tree
    assert sh("git", "--git-dir", str(remote), "rev-list", "--count", "main") == "5"  # history only grows
    assert len(platform.hooks) == 2 and platform.serving == head
