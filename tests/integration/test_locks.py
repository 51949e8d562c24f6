"""One change at a time per service and per database, however a run was started: a run started
from the UI under any ID, or a restore of a database another service shares, meets the lock."""

from __future__ import annotations

import uuid

import pytest
from temporalio.client import WorkflowFailureError

from tests.conftest import running_worker
from tests.contract.vercel import realistic
from tests.helpers import wait_for_phase
from tests.integration.test_restore import backup, shop_db  # noqa: F401 - fixture
from tests.integration.test_vercel_rollback import vercel_service
from workflows import AppRollbackWorkflow, DatabaseRestoreWorkflow
from workflows.base import SERVICE_KEY, TYPE_KEY
from workflows.models import AppRollbackInput, AppRollbackResult, ApprovalInput, RestoreInput, RestoreResult

NO = ApprovalInput(approver="lead", reason="not now")


@pytest.fixture
def shop(vercel, write_config, monkeypatch, slack):
    realistic(vercel)
    monkeypatch.setenv("TEST_VERCEL_TOKEN", vercel.token)
    return vercel, write_config({"shop": {**vercel_service(vercel, policy={"app_approval": "always"}),
                                          "notify": {"slack_webhook_env": "TEST_SLACK_WEBHOOK"}}})


async def start_app(client, task_queue, **request):
    return await client.start_workflow(AppRollbackWorkflow.run, AppRollbackInput(service="shop", **request),
                                       id=f"ui-typed-{uuid.uuid4()}", task_queue=task_queue,
                                       result_type=AppRollbackResult)


async def test_a_second_run_under_another_id_is_refused_naming_the_holder(client, task_queue, shop, slack):
    fake, config = shop
    async with running_worker(client, config, task_queue):
        first = await start_app(client, task_queue)
        await wait_for_phase(first, "awaiting_approval", timeout=60)
        second = await start_app(client, task_queue)
        with pytest.raises(WorkflowFailureError) as refused:
            await second.result()
        message = str(refused.value.cause)
        assert f"service:shop is locked by AppRollbackWorkflow {first.id}" in message
        assert fake.count("POST", "/rollback/") == 0  # the refused run changed nothing
        # it took its lock beside its first reads, and wrote nothing (no capture) before it was refused
        kinds = [event.kind.value for event in (await second.query(AppRollbackWorkflow.status)).timeline]
        assert "captured" not in kinds and kinds[-1] == "failed", kinds
        # and it did not fail where nobody looks: on Slack's escalation channel, listed under its service
        told = [m["text"] for m in slack.messages if f"{second.id} for shop did not start" in m["text"]]
        assert len(told) == 1 and told[0].startswith("ESCALATION:") and f"locked by AppRollbackWorkflow {first.id}" \
            in told[0], [m["text"] for m in slack.messages]
        listed = (await second.describe()).typed_search_attributes
        assert listed.get(SERVICE_KEY) == "shop" and listed.get(TYPE_KEY) == "app"
        dry = await start_app(client, task_queue, dry_run=True)  # a dry run changes nothing: no lock
        assert (await dry.result()).outcome == "dry_run"

        await first.execute_update(AppRollbackWorkflow.reject, NO)
        assert (await first.result()).outcome == "rejected"
        third = await start_app(client, task_queue)  # released on its ending
        await wait_for_phase(third, "awaiting_approval", timeout=60)
        await third.terminate("the holder dies without releasing")
        fourth = await start_app(client, task_queue)  # a dead holder's lock is taken over
        await wait_for_phase(fourth, "awaiting_approval", timeout=60)
        await fourth.execute_update(AppRollbackWorkflow.reject, NO)
        await fourth.result()


@pytest.mark.postgres
async def test_two_services_on_one_database_restore_one_at_a_time(client, task_queue, shop_db, tmp_path):
    import yaml
    from pathlib import Path

    from activities.common import ConfigSource

    name, dsn, admin, config = shop_db
    manifest = await backup(client, task_queue, config)
    settings = yaml.safe_load(Path(config._path).read_text())
    settings["services"]["shop-reports"] = settings["services"]["shop"]  # the same DSN variable
    path = tmp_path / "shared.yaml"
    path.write_text(yaml.safe_dump(settings))
    shared = ConfigSource(path)
    async with running_worker(client, shared, task_queue):
        first = await client.start_workflow(
            DatabaseRestoreWorkflow.run, RestoreInput(service="shop", source=manifest.backup_id),
            id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=RestoreResult)
        await wait_for_phase(first, "awaiting_approval", timeout=60)
        with pytest.raises(WorkflowFailureError) as refused:
            await client.execute_workflow(
                DatabaseRestoreWorkflow.run, RestoreInput(service="shop-reports", source=manifest.backup_id),
                id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=RestoreResult)
        assert "database:127.0.0.1:" in str(refused.value.cause)
        assert f"/{name} is locked by DatabaseRestoreWorkflow {first.id}" in str(refused.value.cause)
        await first.execute_update(DatabaseRestoreWorkflow.reject, NO)
        assert (await first.result()).outcome == "rejected"
