"""Key rotation (runbook 002) with the providers whose APIs create and revoke keys: Supabase
(publishable/secret keys; legacy anon/service_role disabled together) and OpenAI (service-account
project keys, admin keys), against their contract servers, on Vercel and on a real Docker engine.
Key values must never leave the worker's protected store."""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid

import httpx
import pytest
from temporalio.client import WorkflowFailureError

from activities.openai import OpenAIKeys
from starter import engines
from tests.integration.test_vercel_rollback import vercel_service
from tests.conftest import running_worker
from tests.contract.openai import FakeOpenAI
from tests.contract.server import serve
from tests.contract.supabase import FakeSupabase
from tests.helpers import assert_keys_only_in_the_store, history_text, kinds, wait_for_phase
from workflows import KeyRotationWorkflow
from workflows.config import RotatedKey
from workflows.models import ApprovalInput, KeyRotationInput, KeyRotationResult, RollbackStatus

LEAD = ApprovalInput(approver="lead", reason="new keys verified, revoke the old ones")


@pytest.fixture
def supabase(monkeypatch):
    fake = FakeSupabase(token="sbp_" + uuid.uuid4().hex)
    server = serve(fake.app())
    fake.url = server.url
    monkeypatch.setenv("TEST_SUPABASE_PAT", fake.token)
    yield fake
    server.stop()


@pytest.fixture
def openai(monkeypatch):
    fake = FakeOpenAI()
    fake.add_project("proj_shop", "svc_acct_shop")
    _, admin = fake.add_admin_key()  # the worker's own admin key, which manages the others
    server = serve(fake.app())
    fake.url = server.url
    monkeypatch.setenv("TEST_OPENAI_ADMIN_KEY", admin)
    yield fake
    server.stop()


def supabase_key(supabase: FakeSupabase) -> dict:
    return {"name": "SUPABASE_SECRET_KEY", "provider": "supabase", "id_env": "SUPABASE_SECRET_KEY_ID",
            "project": supabase.ref, "admin_token_env": "TEST_SUPABASE_PAT", "api_url": supabase.url,
            "test_url": f"{supabase.url}/rest/v1/"}  # the project's Data API (https://<ref>.supabase.co) in real life


def openai_key(openai: FakeOpenAI) -> dict:
    return {"name": "OPENAI_API_KEY", "provider": "openai", "id_env": "OPENAI_API_KEY_ID", "project": "proj_shop",
            "service_account": "svc_acct_shop", "admin_token_env": "TEST_OPENAI_ADMIN_KEY", "api_url": openai.url}


@pytest.fixture
def shop(vercel, supabase, openai, slack, write_config, monkeypatch):
    """prj_shop on Vercel runs with a Supabase secret key and an OpenAI project key (and their ids)."""
    old_supabase = supabase.add_key("secret")
    old_openai_id, old_openai = openai.add_project_key("proj_shop")
    vercel.add_project("prj_shop", "shop")
    vercel.set_env("prj_shop", "SUPABASE_SECRET_KEY", old_supabase["api_key"])
    vercel.set_env("prj_shop", "SUPABASE_SECRET_KEY_ID", old_supabase["id"])
    vercel.set_env("prj_shop", "OPENAI_API_KEY", old_openai)
    vercel.set_env("prj_shop", "OPENAI_API_KEY_ID", old_openai_id)
    vercel.add_deployment("prj_shop", "dpl_goodzzzzzz", int(time.time() * 1000) + 1)
    monkeypatch.setenv("TEST_VERCEL_TOKEN", vercel.token)
    config = write_config({"shop": {
        **vercel_service(vercel),
        "notify": {"slack_webhook_env": "TEST_SLACK_WEBHOOK"},
        "keys": [supabase_key(supabase), openai_key(openai)],
    }})
    return config, {"supabase_id": old_supabase["id"], "supabase": old_supabase["api_key"],
                    "openai_id": old_openai_id, "openai": old_openai}


def data_api(supabase: FakeSupabase, key: str) -> int:
    return httpx.get(f"{supabase.url}/rest/v1/", headers={"apikey": key}).status_code


def models(openai: FakeOpenAI, key: str) -> int:
    return httpx.get(f"{openai.url}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code


async def start(client, task_queue, service="shop", **request):
    return await client.start_workflow(KeyRotationWorkflow.run, KeyRotationInput(service=service, **request),
                                       id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=KeyRotationResult)


async def test_supabase_secret_key_rotated_and_old_one_deleted_only_after_approval(client, task_queue, shop, vercel,
                                                                                    supabase):
    config, old = shop
    supabase.inject.append(429)  # the Management API's rate limit answers the create first: waited out
    async with running_worker(client, config, task_queue):
        handle = await start(client, task_queue, keys=["SUPABASE_SECRET_KEY"], requested_by="dev")
        await wait_for_phase(handle, "awaiting_approval", timeout=60)
        [new_id] = supabase.created
        new_value = supabase.api_keys[new_id]["api_key"]
        assert new_value.startswith("sb_secret_") and supabase.api_keys[new_id]["type"] == "secret"
        live = vercel.live_env("prj_shop")
        assert (live["SUPABASE_SECRET_KEY"], live["SUPABASE_SECRET_KEY_ID"]) == (new_value, new_id)
        assert supabase.deleted == [] and data_api(supabase, old["supabase"]) == 200  # not before the approval
        await handle.execute_update(KeyRotationWorkflow.approve, LEAD)
        result = await handle.result()
    assert result.outcome == "rotated", result.message
    assert [(d["id"], d["was_compromised"]) for d in supabase.deleted] == [(old["supabase_id"], False)]
    assert data_api(supabase, old["supabase"]) == 401 and data_api(supabase, new_value) == 200
    assert [k.key_id for k in result.new_keys] == [new_id]
    assert result.revoked == [f"SUPABASE_SECRET_KEY {old['supabase_id']}"]
    events = kinds(result.timeline)
    assert events.index("verified") < events.index("approved")
    assert any("old SUPABASE_SECRET_KEY: refused" in e.message for e in result.timeline)
    assert vercel.live_env("prj_shop")["OPENAI_API_KEY"] == old["openai"]  # a key not named is left alone


async def test_openai_project_key_made_for_the_service_account_and_old_one_deleted(client, task_queue, shop, vercel,
                                                                                  openai):
    config, old = shop
    async with running_worker(client, config, task_queue):
        handle = await start(client, task_queue, keys=["OPENAI_API_KEY"])
        await wait_for_phase(handle, "awaiting_approval", timeout=60)
        [new_id] = openai.created
        new_value = openai.project_keys["proj_shop"][new_id]
        assert ("POST", "/v1/organization/projects/proj_shop/service_accounts/svc_acct_shop/api_keys") in openai.log
        assert vercel.live_env("prj_shop")["OPENAI_API_KEY"] == new_value
        assert openai.deleted == [] and models(openai, old["openai"]) == 200
        await handle.execute_update(KeyRotationWorkflow.approve, LEAD)
        result = await handle.result()
    assert result.outcome == "rotated", result.message
    assert openai.deleted == [old["openai_id"]]
    assert models(openai, old["openai"]) == 401 and models(openai, new_value) == 200
    assert vercel.live_env("prj_shop")["OPENAI_API_KEY_ID"] == new_id
    assert any("old OPENAI_API_KEY: refused" in e.message for e in result.timeline)


async def test_openai_key_refused_by_the_models_call_puts_the_old_key_back_and_deletes_nothing(
        client, task_queue, shop, vercel, openai):
    config, old = shop
    openai.new_keys_refused = True  # the new key is made but lacks the models scope
    before = vercel.production_env("prj_shop")
    async with running_worker(client, config, task_queue):
        handle = await start(client, task_queue, keys=["OPENAI_API_KEY"])
        with pytest.raises(WorkflowFailureError) as failure:
            await asyncio.wait_for(handle.result(), 90)  # a run that passed verification would wait for approval
        status = await handle.query("status", result_type=RollbackStatus)
    message = str(failure.value.cause)
    assert "failed and was undone" in message and "nothing was revoked" in message
    assert "the provider refuses the new OPENAI_API_KEY" in message and "insufficient_permissions" in message
    assert vercel.live_env("prj_shop") == before and vercel.redeploys == 2  # the new key's build, then the undo's
    assert openai.deleted == [] and models(openai, old["openai"]) == 200
    assert "approval_requested" not in kinds(status.timeline)


async def test_compromised_keys_revoked_first_and_no_key_value_leaks(client, task_queue, shop, vercel, supabase,
                                                                     openai, slack, tmp_path, caplog):
    """--compromised on both providers (Supabase told was_compromised), and the canary: every key value
    of the run is looked for in every history, the result, Slack, log lines and files outside the store."""
    caplog.set_level(logging.DEBUG)
    config, old = shop
    async with running_worker(client, config, task_queue):
        handle = await start(client, task_queue, compromised=True, requested_by="dev", reason="keys in a public gist")
        status = await wait_for_phase(handle, "awaiting_approval", timeout=60)
        assert "REVOKE the compromised keys now" in status.timeline[-1].message
        assert supabase.created == [] and openai.created == [] and vercel.redeploys == 0
        await handle.execute_update(KeyRotationWorkflow.approve, LEAD)
        result = await handle.result()
        histories = []
        async for execution in client.list_workflows(f"TaskQueue = '{task_queue}'"):
            history = await client.get_workflow_handle(execution.id, run_id=execution.run_id).fetch_history()
            histories.append(history_text(history))
    assert result.outcome == "rotated", result.message
    assert [(d["id"], d["was_compromised"]) for d in supabase.deleted] == [(old["supabase_id"], True)]
    assert "compromised" in supabase.deleted[0]["reason"]
    assert openai.deleted == [old["openai_id"]]
    # revoked before the new keys were made
    assert supabase.keys_log.index(("DELETE", f"api-keys/{old['supabase_id']}")) < supabase.keys_log.index(
        ("POST", "api-keys"))
    assert [m for m, p in openai.log if m in ("POST", "DELETE")] == ["DELETE", "POST"]
    [new_supabase_id], [new_openai_id] = supabase.created, openai.created
    new_values = [supabase.api_keys[new_supabase_id]["api_key"], openai.project_keys["proj_shop"][new_openai_id]]
    live = vercel.live_env("prj_shop")
    assert [live["SUPABASE_SECRET_KEY"], live["OPENAI_API_KEY"]] == new_values
    values = [old["supabase"], old["openai"], *new_values, os.environ["TEST_OPENAI_ADMIN_KEY"], supabase.token]
    assert any('"KeyRotationWorkflow"' in text for text in histories)
    assert any(new_openai_id in text for text in histories)  # decoded payloads: ids are there, keys are not
    assert_keys_only_in_the_store(values, histories, result, slack, caplog.records, tmp_path,
                                  skip=lambda path: path.name == "rollback.yaml")


@pytest.fixture
def legacy_shop(vercel, supabase, slack, write_config, monkeypatch):
    """An app on Supabase's legacy anon and service_role keys."""
    vercel.add_project("prj_legacy", "legacy")
    vercel.set_env("prj_legacy", "SUPABASE_ANON_KEY", supabase.legacy["anon"])
    vercel.set_env("prj_legacy", "SUPABASE_SERVICE_ROLE_KEY", supabase.legacy["service_role"])
    vercel.add_deployment("prj_legacy", "dpl_legacyzzzz", int(time.time() * 1000) + 1)
    monkeypatch.setenv("TEST_VERCEL_TOKEN", vercel.token)
    common = {"provider": "supabase", "project": supabase.ref, "admin_token_env": "TEST_SUPABASE_PAT",
              "api_url": supabase.url, "test_url": f"{supabase.url}/rest/v1/"}
    return write_config({"legacy": {
        "app": {"provider": "vercel", "vercel": {"project": "prj_legacy", "token_env": "TEST_VERCEL_TOKEN",
                                                 "api_url": vercel.url, "poll_interval_seconds": 0.1}},
        "health": {"url": f"{vercel.url}/_site/prj_legacy/health", "consecutive_checks": 1, "interval_seconds": 0.2,
                   "timeout_seconds": 1},
        "notify": {"slack_webhook_env": "TEST_SLACK_WEBHOOK"},
        "keys": [{"name": "SUPABASE_ANON_KEY", "kind": "legacy_anon", **common},
                 {"name": "SUPABASE_SERVICE_ROLE_KEY", "kind": "legacy_service_role", **common}],
    }})


async def test_supabase_legacy_keys_replaced_by_new_ones_then_disabled_together(client, task_queue, legacy_shop,
                                                                              vercel, supabase):
    config = legacy_shop
    old = dict(supabase.legacy)
    async with running_worker(client, config, task_queue):
        # one legacy key alone is refused: disabling it would break the app still running with the other
        with pytest.raises(WorkflowFailureError) as failure:
            await (await start(client, task_queue, service="legacy", keys=["SUPABASE_ANON_KEY"])).result()
        assert "rotate SUPABASE_ANON_KEY, SUPABASE_SERVICE_ROLE_KEY in one run" in str(failure.value.cause.cause)
        assert supabase.created == [] and supabase.legacy_enabled
        handle = await start(client, task_queue, service="legacy")
        await wait_for_phase(handle, "awaiting_approval", timeout=60)
        assert supabase.legacy_enabled  # still on until the approval
        await handle.execute_update(KeyRotationWorkflow.approve, LEAD)
        result = await handle.result()
    assert result.outcome == "rotated", result.message
    assert sorted(k["type"] for k in supabase.api_keys.values()) == ["publishable", "secret"]
    live = vercel.live_env("prj_legacy")
    assert live["SUPABASE_ANON_KEY"].startswith("sb_publishable_")
    assert live["SUPABASE_SERVICE_ROLE_KEY"].startswith("sb_secret_")
    assert not supabase.legacy_enabled and supabase.keys_log.count(("PUT", "api-keys/legacy")) >= 1
    assert data_api(supabase, old["anon"]) == 401 and data_api(supabase, live["SUPABASE_ANON_KEY"]) == 200
    assert any("legacy anon and service_role keys" in e.message for e in result.timeline)


async def test_openai_admin_key_is_created_tested_on_the_admin_api_and_deleted(openai):
    """Admin keys work only on administration endpoints: their test call lists admin keys."""
    spec = RotatedKey.model_validate({"name": "OPENAI_ADMIN_KEY", "provider": "openai", "kind": "admin",
                                      "admin_token_env": "TEST_OPENAI_ADMIN_KEY", "api_url": openai.url})
    keys = OpenAIKeys(spec, "shop")
    async with httpx.AsyncClient() as client:
        key_id, value = await keys.create(client, "shop OPENAI_ADMIN_KEY")
        assert openai.admin_keys[key_id] == value and value.startswith("sk-admin-")
        assert await keys.test(client, key_id, value) == (
            True, f"GET {openai.url}/v1/organization/admin_api_keys?limit=1: 200")
        assert models(openai, value) == 401  # not a project key: /v1/models would call it broken
        assert await keys.revoke(client, key_id) is True
        assert await keys.revoke(client, key_id) is False  # a retry: already gone
        works, detail = await keys.test(client, key_id, value)
    assert not works and "invalid_api_key" in detail and value[:8] not in detail


# ---------------------------------------------------------------------------------------------
# Docker: the env layer recreates the container with the new key


def container_env(container) -> dict[str, str]:
    container.reload()
    return dict(item.partition("=")[::2] for item in container.attrs["Config"]["Env"])


@pytest.mark.docker
async def test_docker_container_recreated_with_the_new_openai_key(client, task_queue, docker_engine, openai,
                                                                  write_config):
    name, port = f"keyweb-{uuid.uuid4().hex[:8]}", engines.free_port()
    old_id, old_value = openai.add_project_key("proj_shop")
    docker_engine.client.containers.run(
        docker_engine.images["v1"], name=name, detach=True, network_mode="host", init=True,
        environment={"PORT": str(port), "OPENAI_API_KEY": old_value, "OPENAI_API_KEY_ID": old_id},
        labels={"io.rollback.test": "1"})
    config = write_config({"web": {
        "app": {"provider": "docker", "docker": {"container": name, "docker_host": docker_engine.address,
                                                 "stop_timeout": 2}},
        "health": {"url": f"http://127.0.0.1:{port}/health", "consecutive_checks": 2, "interval_seconds": 0.3,
                   "timeout_seconds": 1},
        "keys": [openai_key(openai)]}})
    async with running_worker(client, config, task_queue):
        handle = await start(client, task_queue, service="web")
        await wait_for_phase(handle, "awaiting_approval", timeout=90)
        [new_id] = openai.created
        new_value = openai.project_keys["proj_shop"][new_id]
        container = docker_engine.client.containers.get(name)
        env = container_env(container)  # docker inspect: the recreated container runs with the new key
        assert (env["OPENAI_API_KEY"], env["OPENAI_API_KEY_ID"], env["PORT"]) == (new_value, new_id, str(port))
        assert container.status == "running" and openai.deleted == [] and models(openai, old_value) == 200
        await handle.execute_update(KeyRotationWorkflow.approve, LEAD)
        result = await handle.result()
    assert result.outcome == "rotated", result.message
    assert openai.deleted == [old_id] and models(openai, old_value) == 401
    assert result.deployment == docker_engine.client.containers.get(name).id[:12]
