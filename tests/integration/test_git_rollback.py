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


async def test_a_deploy_hook_with_the_wrong_secret_deploys_nothing(repo, platform, write_config, monkeypatch):
    from temporalio.exceptions import ApplicationError

    remote, commits = repo
    activities = GitActivities(write_config({"web": git_service(remote, platform)}))
    monkeypatch.setenv("TEST_DEPLOY_HOOK", f"{platform.url}/hooks/dh_wrong")
    request = ExecuteRequest(service="web", current=AppVersion(provider="git", id=commits["bad2"]),
                             target=AppVersion(provider="git", id=commits["good"], label="good"),
                             rollback_key="wf-2/run-1")
    with pytest.raises(ApplicationError, match="deploy hook answered HTTP 404"):
        await ActivityEnvironment().run(activities.execute, request)
    assert platform.refused == 1 and platform.hooks == [] and platform.serving == ""


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


async def test_a_second_rollback_never_redeploys_the_bad_commit(client, task_queue, repo, platform, write_config):
    """v1 good → v2 bad; the first rollback puts v1 back. The same command again must not revert
    the revert (that would deploy v2): there is no earlier good commit, and an explicit `--to`
    the bad commit waits for an approval that says what it is."""
    from temporalio.client import WorkflowFailureError

    from tests.helpers import assert_redeploy_waits_for_approval

    remote, commits = repo
    config = write_config({"web": git_service(remote, platform)})
    async with running_worker(client, config, task_queue):
        first = await client.execute_workflow(
            AppRollbackWorkflow.run, AppRollbackInput(service="web", target=commits["good"]),
            id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=AppRollbackResult)
        assert first.outcome == "rolled_back"
        head = sh("git", "--git-dir", str(remote), "rev-parse", "main")
        with pytest.raises(WorkflowFailureError) as failure:
            await client.execute_workflow(
                AppRollbackWorkflow.run, AppRollbackInput(service="web"),
                id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=AppRollbackResult)
    assert "no earlier good commit on main" in str(failure.value.cause.cause)
    assert sh("git", "--git-dir", str(remote), "rev-parse", "main") == head  # nothing pushed
    assert platform.hooks == [head] and platform.serving == head  # nothing deployed: v1 still serves

    def unchanged() -> None:
        assert sh("git", "--git-dir", str(remote), "rev-parse", "main") == head
        assert platform.hooks == [head]

    await assert_redeploy_waits_for_approval(client, task_queue, config, "web", commits["bad2"], unchanged)


async def test_default_target_skips_commits_rolled_back_from(repo, platform, write_config):
    """Rolled back one commit (v2.1 → v2), then again: the target is v1, not v2.1 or v2 itself."""
    remote, commits = repo
    activities = GitActivities(write_config({"web": git_service(remote, platform)}))
    environment = ActivityEnvironment()
    from workflows.models import ServiceRef, TargetRequest

    current = await environment.run(activities.current, ServiceRef(service="web"))
    first = await environment.run(activities.select_target, TargetRequest(service="web", current=current))
    assert first.id == commits["bad1"]
    await environment.run(activities.execute, ExecuteRequest(service="web", current=current, target=first,
                                                             rollback_key="wf-a/run-1"))
    current = await environment.run(activities.current, ServiceRef(service="web"))
    second = await environment.run(activities.select_target, TargetRequest(service="web", current=current))
    assert second.id == commits["good"] and not second.rolled_back_from
    explicit = await environment.run(activities.select_target,
                                     TargetRequest(service="web", current=current, explicit=commits["bad2"]))
    assert explicit.rolled_back_from
