"""Environment rollback (runbook 000) against the Vercel contract server: diff, restore with a
redeploy, undo on failed verification, bad input, and no value anywhere but the protected store."""

from __future__ import annotations

import stat
import time
import uuid
from pathlib import Path

import pytest
from temporalio.client import WorkflowFailureError

from tests.conftest import running_worker
from tests.helpers import history_text, kinds
from workflows import AppRollbackWorkflow, EnvDiffWorkflow, EnvRollbackWorkflow
from workflows.models import (AppRollbackInput, AppRollbackResult, EnvDiff, EnvRestoreInput, EnvRestoreResult,
                              ServiceRef)

GOOD = {"FEATURE_FLAGS": "checkout-v1", "API_URL": "https://api.example.com"}


def now_ms() -> int:
    return int(time.time() * 1000)


def vercel_service(fake) -> dict:
    return {
        "app": {"provider": "vercel", "vercel": {"project": "prj_shop", "token_env": "TEST_VERCEL_TOKEN",
                                                 "api_url": fake.url, "poll_interval_seconds": 0.1}},
        "health": {"url": f"{fake.url}/_site/prj_shop/health", "version_url": f"{fake.url}/_site/prj_shop/version",
                   "consecutive_checks": 2, "interval_seconds": 0.2, "timeout_seconds": 1},
    }


@pytest.fixture
def shop(vercel, write_config, monkeypatch, tmp_path):
    """dpl_good built with GOOD and a secret; then someone changed FEATURE_FLAGS and the secret,
    deleted API_URL, added DEBUG, and deployed dpl_bad, which is unhealthy."""
    canary = f"canary-{uuid.uuid4().hex}"
    vercel.add_project("prj_shop", "shop")
    for key, value in GOOD.items():
        vercel.set_env("prj_shop", key, value)
    vercel.set_env("prj_shop", "STRIPE_SECRET", canary + "-old")
    vercel.add_deployment("prj_shop", "dpl_goodzzzzzz", now_ms() + 1)
    monkeypatch.setenv("TEST_VERCEL_TOKEN", vercel.token)
    config = write_config({"shop": vercel_service(vercel)})
    return vercel, config, canary


def break_it(fake, canary: str) -> None:
    fake.set_env("prj_shop", "FEATURE_FLAGS", "checkout-v2")
    fake.set_env("prj_shop", "STRIPE_SECRET", canary + "-new")
    fake.set_env("prj_shop", "DEBUG", "1")
    fake.envs["prj_shop"] = [e for e in fake.envs["prj_shop"] if e["key"] != "API_URL"]
    fake.unhealthy_env["FEATURE_FLAGS"] = "checkout-v2"
    fake.add_deployment("prj_shop", "dpl_badzzzzzzz", now_ms() + 1)


async def diff(client, task_queue) -> EnvDiff:
    return await client.execute_workflow(EnvDiffWorkflow.run, ServiceRef(service="shop"), id=f"wf-{uuid.uuid4()}",
                                         task_queue=task_queue, result_type=EnvDiff)


async def restore(client, task_queue, **request) -> EnvRestoreResult:
    return await client.execute_workflow(EnvRollbackWorkflow.run, EnvRestoreInput(service="shop", **request),
                                         id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=EnvRestoreResult)


async def test_diff_names_what_changed_and_restore_puts_the_good_environment_back(client, task_queue, shop):
    fake, config, canary = shop
    async with running_worker(client, config, task_queue):
        first = await diff(client, task_queue)  # the pipeline's record of the healthy deploy
        assert first.base is None and first.current.deployment == "dpl_goodzzzzzz" and first.current.healthy
        break_it(fake, canary)
        changes = await diff(client, task_queue)
        assert changes.base.deployment == "dpl_goodzzzzzz" and changes.current.deployment == "dpl_badzzzzzzz"
        assert (changes.added, changes.removed, changes.changed) == (["DEBUG"], ["API_URL"],
                                                                     ["FEATURE_FLAGS", "STRIPE_SECRET"])
        result = await restore(client, task_queue, reason="checkout broke after the env change")
    assert result.outcome == "rolled_back", result.message
    # the project's variables are the good ones again, and production runs a new build made with them
    assert fake.production_env("prj_shop") == {**GOOD, "STRIPE_SECRET": canary + "-old"}
    assert fake.production["prj_shop"] == result.deployment and result.deployment.startswith("dpl_redeploy")
    assert fake.live_env("prj_shop") == {**GOOD, "STRIPE_SECRET": canary + "-old"}
    assert fake.redeploys == 1
    assert fake.count("PATCH", "/v10/projects/prj_shop/env/") == 2  # FEATURE_FLAGS, STRIPE_SECRET
    assert fake.count("DELETE", "/v10/projects/prj_shop/env/") == 1  # DEBUG
    assert "verified" in kinds(result.timeline)


async def test_failed_verification_puts_the_replaced_values_back(client, task_queue, shop):
    fake, config, canary = shop
    async with running_worker(client, config, task_queue):
        await diff(client, task_queue)
        break_it(fake, canary)
        fake.unhealthy_env["API_URL"] = GOOD["API_URL"]  # the old environment does not help either
        bad_env = fake.production_env("prj_shop")
        with pytest.raises(WorkflowFailureError) as failure:
            await restore(client, task_queue)
    assert "failed and was undone" in str(failure.value.cause)
    assert fake.production_env("prj_shop") == bad_env  # every replaced value back, the added one removed again
    assert fake.redeploys == 2  # the restore's build, then the undo's
    assert fake.live_env("prj_shop") == bad_env


async def test_unknown_deployment_or_service_is_a_clear_error_and_changes_nothing(client, task_queue, shop):
    fake, config, canary = shop
    async with running_worker(client, config, task_queue):
        await diff(client, task_queue)
        break_it(fake, canary)
        with pytest.raises(WorkflowFailureError) as failure:
            await restore(client, task_queue, to="dpl_nosuchthing")
        message = str(failure.value.cause.cause)
        assert "no recorded environment for deployment 'dpl_nosuchthing'" in message
        assert "dpl_goodzzzzzz" in message  # it names what can be restored
        with pytest.raises(WorkflowFailureError) as failure:
            await client.execute_workflow(EnvRollbackWorkflow.run, EnvRestoreInput(service="nope"),
                                          id=f"wf-{uuid.uuid4()}", task_queue=task_queue)
        assert "unknown service 'nope' (configured: shop)" in str(failure.value.cause.cause)
    assert fake.redeploys == 0 and fake.count("PATCH", "/env/") == fake.count("DELETE", "/env/") == 0


async def test_dry_run_plans_without_changing_anything(client, task_queue, shop):
    fake, config, canary = shop
    async with running_worker(client, config, task_queue):
        await diff(client, task_queue)
        break_it(fake, canary)
        result = await restore(client, task_queue, dry_run=True)
    assert result.outcome == "dry_run" and result.diff.changed == ["FEATURE_FLAGS", "STRIPE_SECRET"]
    assert fake.redeploys == 0 and fake.count("PATCH", "/env/") == 0


async def test_no_env_value_in_any_history_result_or_file_but_the_protected_store(client, task_queue, shop, tmp_path):
    fake, config, canary = shop
    async with running_worker(client, config, task_queue):
        await diff(client, task_queue)
        break_it(fake, canary)
        app = await client.execute_workflow(  # an app rollback records the environment at capture
            AppRollbackWorkflow.run, AppRollbackInput(service="shop", dry_run=False, target="dpl_goodzzzzzz"),
            id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=AppRollbackResult)
        assert any("environment of" in e.message for e in app.timeline), [e.message for e in app.timeline]
        fake.unhealthy_env.clear()
        result = await restore(client, task_queue, to="dpl_goodzzzzzz")
        assert result.outcome == "rolled_back", result.message  # values set and read back through the store
        histories = []
        async for execution in client.list_workflows(f"TaskQueue = '{task_queue}'"):
            history = await client.get_workflow_handle(execution.id, run_id=execution.run_id).fetch_history()
            histories.append(history_text(history))  # payloads decoded: a leak would show
    assert len(histories) >= 4
    for text in histories:
        assert canary not in text
    assert canary not in app.model_dump_json() and canary not in result.model_dump_json()
    stored = []
    for path in Path(tmp_path).rglob("*"):
        if path.is_file() and canary.encode() in path.read_bytes():
            stored.append(path)
            assert "/state/env/shop/" in str(path), f"{path} holds an env value outside the protected store"
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stored  # the values are kept, so they can be put back
    snapshots = config.state.get("env-snapshots", "shop")  # the index: names and hashes only
    assert {"FEATURE_FLAGS", "STRIPE_SECRET"} <= set(snapshots[-1]["hashes"])
