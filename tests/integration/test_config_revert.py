"""Config file revert (runbook 000 "Configuration Rollback") on a real git repository: one commit
putting vercel.json back, the deploy hook called once, verification, undo."""

from __future__ import annotations

import uuid

import pytest
from temporalio.client import WorkflowFailureError

from tests.conftest import running_worker
from tests.helpers import git_service, sh
from workflows import ConfigRevertWorkflow
from workflows.models import ConfigRevertInput, ConfigRevertResult

GOOD_CONFIG = '{"rewrites": [{"source": "/api/(.*)", "destination": "/api/$1"}]}\n'
BAD_CONFIG = '{"rewrites": []}\n'


@pytest.fixture
def site(tmp_path, platform, write_config):
    """A repo whose last commit broke vercel.json together with an app change that must stay."""
    remote = tmp_path / "site.git"
    sh("git", "init", "--quiet", "--bare", "--initial-branch=main", str(remote))
    seed = tmp_path / "site-seed"
    sh("git", "clone", "--quiet", str(remote), str(seed))
    sh("git", "config", "user.email", "dev@example.com", cwd=seed)
    sh("git", "config", "user.name", "dev", cwd=seed)
    commits = {}
    for name, config, app in (("good", GOOD_CONFIG, "v1"), ("bad", BAD_CONFIG, "v2")):
        (seed / "vercel.json").write_text(config)
        (seed / "app.txt").write_text(app + "\n")
        (seed / "SCHEMA_VERSION").write_text("1\n")
        sh("git", "add", "-A", cwd=seed)
        sh("git", "commit", "--quiet", "-m", f"release {app}", cwd=seed)
        commits[name] = sh("git", "rev-parse", "HEAD", cwd=seed)
    sh("git", "push", "--quiet", "origin", "HEAD:main", cwd=seed)
    service = git_service(remote, platform)
    service["config_files"] = {"paths": ["vercel.json", "next.config.js"]}
    return remote, commits, write_config({"site": service})


def show(remote, rev: str, path: str) -> str:
    return sh("git", "--git-dir", str(remote), "show", f"{rev}:{path}") + "\n"


async def revert(client, task_queue, config, **request) -> ConfigRevertResult:
    async with running_worker(client, config, task_queue):
        return await client.execute_workflow(ConfigRevertWorkflow.run, ConfigRevertInput(service="site", **request),
                                             id=f"wf-{uuid.uuid4()}", task_queue=task_queue,
                                             result_type=ConfigRevertResult)


async def test_reverts_only_the_config_file_in_one_commit_and_deploys_it(client, task_queue, site, platform):
    remote, commits, config = site
    result = await revert(client, task_queue, config, to=commits["good"])
    assert result.outcome == "rolled_back", result.message
    assert result.plan.changed == ["vercel.json"]  # next.config.js exists in neither: not a change
    head = sh("git", "--git-dir", str(remote), "rev-parse", "main")
    assert head == result.commit and sh("git", "--git-dir", str(remote), "rev-parse", "main~1") == commits["bad"]
    assert show(remote, "main", "vercel.json") == GOOD_CONFIG
    assert show(remote, "main", "app.txt") == "v2\n"  # the app change stays
    message = sh("git", "--git-dir", str(remote), "log", "-1", "--format=%B", "main")
    assert f"Rolled-Back-From: {commits['good']}..{commits['bad']}" in message and "Rollback-Key: " in message
    assert platform.hooks == [head] and platform.serving == head


async def test_failed_verification_reverts_the_revert(client, task_queue, site, platform):
    remote, commits, config = site
    platform.broken_deploys = {1}  # the build with the reverted file is unhealthy
    with pytest.raises(WorkflowFailureError) as failure:
        await revert(client, task_queue, config, to=commits["good"])
    assert "failed and was undone" in str(failure.value.cause)
    assert show(remote, "main", "vercel.json") == BAD_CONFIG
    assert sh("git", "--git-dir", str(remote), "rev-list", "--count", f"{commits['bad']}..main") == "2"
    assert len(platform.hooks) == 2 and platform.serving == sh("git", "--git-dir", str(remote), "rev-parse", "main")


async def test_unknown_commit_is_a_clear_error_and_changes_nothing(client, task_queue, site, platform):
    remote, commits, config = site
    with pytest.raises(WorkflowFailureError) as failure:
        await revert(client, task_queue, config, to="0123456789abcdef")
    assert "commit '0123456789abcdef' not found on main" in str(failure.value.cause.cause)
    with pytest.raises(WorkflowFailureError) as failure:  # a typo in --path is not "nothing to revert"
        await revert(client, task_queue, config, to=commits["good"], paths=["vercel.jsn"])
    assert "vercel.jsn exists neither at" in str(failure.value.cause.cause)
    assert sh("git", "--git-dir", str(remote), "rev-parse", "main") == commits["bad"] and platform.hooks == []


async def test_dry_run_names_the_files_and_changes_nothing(client, task_queue, site, platform):
    remote, commits, config = site
    result = await revert(client, task_queue, config, to=commits["good"], dry_run=True, paths=["vercel.json"])
    assert result.outcome == "dry_run" and result.plan.changed == ["vercel.json"]
    assert sh("git", "--git-dir", str(remote), "rev-parse", "main") == commits["bad"] and platform.hooks == []
