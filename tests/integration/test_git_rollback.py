"""Git revert + redeploy against a local bare repository and a deploy-hook server."""

from __future__ import annotations

import uuid

import pytest
from temporalio.testing import ActivityEnvironment

from activities.git import GitActivities
from tests.conftest import running_worker
from tests.helpers import git_service, kinds, sh
from workflows import AppRollbackWorkflow
from workflows.models import AppRollbackInput, AppRollbackResult, AppVersion, ExecuteRequest


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
