"""AppRollbackWorkflow against the Vercel contract server (the documented API, errors included)."""

from __future__ import annotations

import uuid

import pytest
from temporalio.client import WorkflowFailureError

from tests.conftest import running_worker
from tests.contract.vercel import realistic
from tests.helpers import kinds
from workflows import AppRollbackWorkflow
from workflows.models import AppRollbackInput, AppRollbackResult


def vercel_service(fake, **extra) -> dict:
    return {
        "app": {"provider": "vercel", "vercel": {"project": "prj_shop", "token_env": "TEST_VERCEL_TOKEN",
                                                 "api_url": fake.url, "poll_interval_seconds": 0.1}},
        "health": {"url": f"{fake.url}/_site/prj_shop/health", "version_url": f"{fake.url}/_site/prj_shop/version",
                   "consecutive_checks": 2, "interval_seconds": 0.2, "timeout_seconds": 1},
        **extra,
    }


@pytest.fixture
def shop(vercel, write_config, monkeypatch):
    realistic(vercel)
    monkeypatch.setenv("TEST_VERCEL_TOKEN", vercel.token)
    return vercel, write_config({"shop": vercel_service(vercel)})


async def run(client, task_queue, config, **request) -> AppRollbackResult:
    async with running_worker(client, config, task_queue):
        return await client.execute_workflow(
            AppRollbackWorkflow.run, AppRollbackInput(service="shop", **request),
            id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=AppRollbackResult,
        )


async def test_rollback_to_newest_ready_production_candidate(client, task_queue, shop):
    fake, config = shop
    assert fake.production["prj_shop"] == "dpl_badprodzzz"
    result = await run(client, task_queue, config)
    assert result.outcome == "rolled_back"
    assert result.plan.target.id == "dpl_goodprodzz"  # not the ERROR build, previews or non-candidates
    assert fake.production["prj_shop"] == "dpl_goodprodzz"
    assert fake.count("POST", "/rollback/dpl_goodprodzz") == 1
    assert fake.count("GET", "/v6/deployments") >= 2  # it paged past the first page
    assert "verified" in kinds(result.timeline)
    assert result.plan.schema_check.message.startswith("target expects schema 3 but the live version is unknown")


async def test_conflict_then_success(client, task_queue, shop):
    fake, config = shop
    fake.inject["rollback"].append((409, {}))
    result = await run(client, task_queue, config)
    assert result.outcome == "rolled_back"
    assert fake.count("POST", "/rollback/") == 2
    assert fake.production["prj_shop"] == "dpl_goodprodzz"


async def test_rate_limit_waits_for_retry_after(client, task_queue, shop):
    fake, config = shop
    fake.inject["rollback"].append((429, {"Retry-After": "2"}))
    result = await run(client, task_queue, config)
    assert result.outcome == "rolled_back"
    posts = [t for m, p, _, t in fake.calls if m == "POST" and "/rollback/" in p]
    assert len(posts) == 2 and posts[1] - posts[0] >= 1.9


async def test_bad_token_is_a_clear_non_retryable_error(client, task_queue, shop, monkeypatch):
    fake, config = shop
    monkeypatch.setenv("TEST_VERCEL_TOKEN", "wrong-token")
    with pytest.raises(WorkflowFailureError) as failure:
        await run(client, task_queue, config)
    message = str(failure.value.cause.cause)
    assert "Vercel refused the token (401)" in message and "$TEST_VERCEL_TOKEN" in message
    assert "wrong-token" not in message
    assert fake.count("GET", "/v9/projects/prj_shop") == 1  # not retried
    assert fake.production["prj_shop"] == "dpl_badprodzzz"


async def test_failed_rollback_job_is_compensated(client, task_queue, shop):
    fake, config = shop
    fake.next_job_outcome = "failed"
    async with running_worker(client, config, task_queue):
        handle = await client.start_workflow(AppRollbackWorkflow.run, AppRollbackInput(service="shop"),
                                             id=f"wf-{uuid.uuid4()}", task_queue=task_queue)
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        status = await handle.query(AppRollbackWorkflow.status)
    assert "ended failed" in str(failure.value.cause)
    assert kinds(status.timeline)[-3:] == ["compensating", "compensated", "failed"]
    assert fake.production["prj_shop"] == "dpl_badprodzzz"


async def test_unhealthy_target_is_undone_by_promoting_the_original(client, task_queue, shop):
    fake, config = shop
    next(d for d in fake.deployments if d["uid"] == "dpl_goodprodzz")["meta"]["health"] = "degraded"
    with pytest.raises(WorkflowFailureError) as failure:
        await run(client, task_queue, config)
    assert "verification of" in str(failure.value.cause)
    assert fake.count("POST", "/v10/projects/prj_shop/promote/dpl_badprodzzz") == 1
    assert fake.production["prj_shop"] == "dpl_badprodzzz"


async def test_explicit_preview_target_is_refused(client, task_queue, shop):
    fake, config = shop
    with pytest.raises(WorkflowFailureError) as failure:
        await run(client, task_queue, config, target="dpl_preview_new")
    assert "only READY production deployments" in str(failure.value.cause.cause)
    assert fake.count("POST", "") == 0


async def test_a_second_rollback_never_promotes_the_bad_deployment(client, task_queue, shop):
    from tests.helpers import assert_redeploy_waits_for_approval

    fake, config = shop
    first = await run(client, task_queue, config)
    assert first.outcome == "rolled_back" and fake.production["prj_shop"] == "dpl_goodprodzz"
    second = await run(client, task_queue, config)  # someone runs the same command again
    assert second.plan.target.id not in ("dpl_badprodzzz", "dpl_goodprodzz")
    assert second.plan.target.details["created"] < first.plan.target.details["created"]  # further back, not forward
    assert fake.production["prj_shop"] == second.plan.target.id
    posts = fake.count("POST", "/")

    def unchanged() -> None:
        assert fake.production["prj_shop"] == second.plan.target.id and fake.count("POST", "/") == posts

    await assert_redeploy_waits_for_approval(client, task_queue, config, "shop", "dpl_badprodzzz", unchanged)


async def test_each_run_of_a_reused_workflow_id_posts_its_own_messages(client, task_queue, vercel, write_config,
                                                                      monkeypatch, slack):
    """`app-rollback-<service>` is reused: the second run's "rolled back" message is its own,
    not taken for a retry of the first's."""
    from starter.start import start_app_rollback

    realistic(vercel)
    monkeypatch.setenv("TEST_VERCEL_TOKEN", vercel.token)
    config = write_config({"shop": vercel_service(vercel, notify={"slack_webhook_env": "TEST_SLACK_WEBHOOK"})})
    async with running_worker(client, config, task_queue):
        for _ in range(2):
            handle = await start_app_rollback(client, task_queue, AppRollbackInput(service="shop"))
            assert (await handle.result()).outcome == "rolled_back"
    rolled_back = [m["text"] for m in slack.messages if m["text"].startswith("shop rolled back:")]
    assert len(rolled_back) == 2 and rolled_back[0] != rolled_back[1], rolled_back


def test_contract_refuses_what_vercel_refuses(vercel):
    import httpx

    realistic(vercel)
    auth = {"Authorization": f"Bearer {vercel.token}"}
    url = f"{vercel.url}/v9/projects/prj_shop/rollback"
    # READY production, but not a rollback candidate (Vercel keeps only some): refused, nothing moves
    refused = httpx.post(f"{url}/dpl_nocand0000", json={}, headers=auth)
    assert refused.status_code == 400 and "not a rollback candidate" in refused.json()["error"]["message"]
    bad_json = httpx.post(f"{url}/dpl_goodprodzz", content=b"{not json", headers=auth)
    assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == "bad_request"
    assert vercel.production["prj_shop"] == "dpl_badprodzzz"


async def test_a_team_project_needs_its_team_id(client, task_queue, vercel, write_config, monkeypatch):
    """A project owned by a team that is not the token's default scope: every call must carry
    `teamId` (Vercel answers 403 otherwise). Without `team:` the rollback stops with a clear error and
    moves nothing; with it, every call we make names the team and the rollback goes through."""
    vercel.team_id = "team_acme"
    realistic(vercel)
    monkeypatch.setenv("TEST_VERCEL_TOKEN", vercel.token)
    without_team = write_config({"shop": vercel_service(vercel)})
    with pytest.raises(WorkflowFailureError) as failure:
        await run(client, task_queue, without_team)
    assert "Vercel refused the token (403)" in str(failure.value.cause.cause)
    assert "team access" in str(failure.value.cause.cause)
    assert vercel.production["prj_shop"] == "dpl_badprodzzz" and vercel.count("POST", "") == 0

    service = vercel_service(vercel)
    service["app"]["vercel"]["team"] = "team_acme"
    vercel.calls.clear()
    result = await run(client, task_queue, write_config({"shop": service}))
    assert result.outcome == "rolled_back"
    assert vercel.production["prj_shop"] == "dpl_goodprodzz"
    api_calls = [(m, p, q) for m, p, q, _ in vercel.calls if not p.startswith("/_site/")]
    assert api_calls and all(q.get("teamId") == "team_acme" for _, _, q in api_calls), api_calls
