"""Key rotation (runbook 002) against contract servers: Vercel (the deployment's environment and
redeploys), Twilio (keys created and revoked by API) and Stripe (keys a person creates and rolls
in the Dashboard; the worker only tests them). Key values must never leave the worker's
protected store."""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path

import httpx
import pytest
from temporalio.client import WorkflowFailureError, WorkflowUpdateFailedError

from activities.audit import audit_path, read_audit
from tests.integration.test_vercel_rollback import vercel_service
from tests.conftest import running_worker
from tests.contract.server import serve
from tests.contract.stripe import FakeStripe
from tests.contract.twilio import FakeTwilio
from tests.helpers import assert_eventually, assert_keys_only_in_the_store, history_text, kinds, wait_for_phase
from workflows import KeyRotationWorkflow
from workflows.models import ApprovalInput, KeyReference, KeyRotationInput, KeyRotationResult, RollbackStatus

LEAD = ApprovalInput(approver="lead", reason="new keys verified, revoke the old ones")


@pytest.fixture
def twilio(monkeypatch):
    fake = FakeTwilio()
    server = serve(fake.app())
    fake.url = server.url
    monkeypatch.setenv("TEST_TWILIO_AUTH_TOKEN", fake.auth_token)
    yield fake
    server.stop()


@pytest.fixture
def stripe():
    fake = FakeStripe()
    server = serve(fake.app())
    fake.url = server.url
    yield fake
    server.stop()


@pytest.fixture
def shop(vercel, twilio, stripe, slack, write_config, monkeypatch):
    """prj_shop on Vercel runs with a Twilio API key (sid + secret) and a Stripe secret key."""
    old_sid, old_secret = twilio.add_key()
    old_stripe = stripe.new_key()
    vercel.add_project("prj_shop", "shop")
    vercel.set_env("prj_shop", "API_URL", "https://api.example.com")
    vercel.set_env("prj_shop", "TWILIO_API_KEY", old_sid)
    vercel.set_env("prj_shop", "TWILIO_API_SECRET", old_secret, type_="sensitive")
    vercel.set_env("prj_shop", "STRIPE_SECRET_KEY", old_stripe)
    vercel.add_deployment("prj_shop", "dpl_goodzzzzzz", int(time.time() * 1000) + 1)
    monkeypatch.setenv("TEST_VERCEL_TOKEN", vercel.token)
    config = write_config({"shop": {
        **vercel_service(vercel),
        "notify": {"slack_webhook_env": "TEST_SLACK_WEBHOOK"},
        "keys": [
            {"name": "TWILIO_API_SECRET", "provider": "twilio", "id_env": "TWILIO_API_KEY", "account": twilio.account,
             "admin_token_env": "TEST_TWILIO_AUTH_TOKEN", "api_url": twilio.url},
            {"name": "STRIPE_SECRET_KEY", "provider": "stripe", "api_url": stripe.url},
        ],
    }})
    # the sensitive secret cannot be read back from Vercel: the tool knows it because it set it
    # (a real setup's first rotation or env record); here the dashboard did, so tell the store
    from activities.envstore import EnvStore
    EnvStore(config).remember("shop", {"TWILIO_API_SECRET": old_secret})
    return config, {"sid": old_sid, "secret": old_secret, "stripe": old_stripe}


def twilio_works(twilio: FakeTwilio, sid: str, secret: str) -> int:
    return httpx.get(f"{twilio.url}/2010-04-01/Accounts/{twilio.account}/Messages.json?PageSize=1",
                     auth=(sid, secret)).status_code


async def start(client, task_queue, **request):
    return await client.start_workflow(KeyRotationWorkflow.run, KeyRotationInput(service="shop", **request),
                                       id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=KeyRotationResult)


async def waiting_for_keys(handle) -> None:
    async def asked() -> bool:
        status = await handle.query("status", result_type=RollbackStatus)
        return any("hand it over" in e.message for e in status.timeline)
    await assert_eventually(asked, 60, message="the request for a key")


async def test_twilio_key_rotated_old_revoked_only_after_approval(client, task_queue, shop, vercel, twilio):
    config, old = shop
    async with running_worker(client, config, task_queue):
        handle = await start(client, task_queue, keys=["TWILIO_API_SECRET"], requested_by="dev")
        await wait_for_phase(handle, "awaiting_approval", timeout=60)
        # the new key is live in the deployment and works; the old one is not revoked yet
        [new_sid] = twilio.created
        new_secret = twilio.keys[new_sid]
        live = vercel.live_env("prj_shop")
        assert (live["TWILIO_API_KEY"], live["TWILIO_API_SECRET"]) == (new_sid, new_secret)
        assert vercel.production_env("prj_shop")["TWILIO_API_KEY"] == new_sid and vercel.redeploys == 1
        assert twilio.deleted == [] and twilio_works(twilio, old["sid"], old["secret"]) == 200
        await handle.execute_update(KeyRotationWorkflow.approve, LEAD)
        result = await handle.result()
    assert result.outcome == "rotated", result.message
    assert twilio.deleted == [old["sid"]]
    assert twilio_works(twilio, old["sid"], old["secret"]) == 401  # error 20003 for the revoked key
    assert twilio_works(twilio, new_sid, new_secret) == 200
    assert [k.key_id for k in result.new_keys] == [new_sid] and result.revoked == [f"TWILIO_API_SECRET {old['sid']}"]
    events = kinds(result.timeline)
    assert events.index("verified") < events.index("approved")
    assert any("old TWILIO_API_SECRET: refused" in e.message for e in result.timeline)
    assert vercel.live_env("prj_shop")["STRIPE_SECRET_KEY"] == old["stripe"]  # a key not named is left alone
    audit = [(e.event, e.step, e.detail.get("key_id")) for e in read_audit(audit_path(config.config), "shop")]
    assert ("key_created", "TWILIO_API_SECRET", new_sid) in audit
    assert ("approved", "rotate keys", None) in audit
    assert ("key_revoked", "TWILIO_API_SECRET", old["sid"]) in audit
    revoked = ("key_revoked", "TWILIO_API_SECRET", old["sid"])
    assert audit.index(("approved", "rotate keys", None)) < audit.index(revoked)


async def test_failed_verification_puts_the_old_keys_back_and_revokes_nothing(client, task_queue, shop, vercel,
                                                                               twilio):
    config, old = shop
    twilio.new_keys_refused = True  # the new key is made but the provider refuses it for the test call
    before = vercel.production_env("prj_shop")
    async with running_worker(client, config, task_queue):
        handle = await start(client, task_queue, keys=["TWILIO_API_SECRET"])
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
        status = await handle.query("status", result_type=RollbackStatus)
    assert "failed and was undone" in str(failure.value.cause) and "nothing was revoked" in str(failure.value.cause)
    assert vercel.production_env("prj_shop") == before
    assert vercel.live_env("prj_shop") == before
    assert vercel.redeploys == 2  # the new keys' build, then the undo's
    assert twilio.deleted == [] and twilio_works(twilio, old["sid"], old["secret"]) == 200
    assert "approval_requested" not in kinds(status.timeline)  # never asked to revoke


async def test_compromised_key_is_revoked_first_after_approval(client, task_queue, shop, vercel, twilio):
    config, old = shop
    async with running_worker(client, config, task_queue):
        handle = await start(client, task_queue, keys=["TWILIO_API_SECRET"], compromised=True, requested_by="dev")
        status = await wait_for_phase(handle, "awaiting_approval", timeout=60)
        assert "REVOKE the compromised keys now" in status.timeline[-1].message
        assert twilio.deleted == [] and twilio.created == [] and vercel.redeploys == 0  # nothing before approval
        await handle.execute_update(KeyRotationWorkflow.approve, LEAD)
        result = await handle.result()
    assert result.outcome == "rotated", result.message
    assert twilio.deleted == [old["sid"]]
    [new_sid] = twilio.created
    calls = [(m, p) for m, p in twilio.log if m in ("POST", "DELETE")]
    assert calls[0][0] == "DELETE" and calls[1][0] == "POST"  # revoked first, then created
    assert vercel.live_env("prj_shop")["TWILIO_API_KEY"] == new_sid


async def test_person_provides_a_stripe_key_by_reference_and_no_key_value_leaks(client, task_queue, shop, vercel,
                                                                                stripe, twilio, slack, tmp_path,
                                                                                caplog):
    """The canary: every key value of the run (old and new, Stripe and Twilio) is looked for in
    every history, the result, every log line and every file outside the protected store."""
    caplog.set_level(logging.DEBUG)
    config, old = shop
    new_stripe = stripe.new_key()
    handover = tmp_path / "handover" / "stripe.key"
    handover.parent.mkdir()
    async with running_worker(client, config, task_queue):
        handle = await start(client, task_queue, requested_by="dev")  # both configured keys
        await waiting_for_keys(handle)
        # a pasted value is refused without being recorded or echoed
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(KeyRotationWorkflow.provide_key,
                                        KeyReference(key="STRIPE_SECRET_KEY", reference=new_stripe))
        assert "never the key" in str(refused.value.cause) and new_stripe not in str(refused.value.cause)
        # a key that does not work is refused with the reason; the run keeps waiting
        bad = tmp_path / "handover" / "bad.key"
        bad.write_text("sk_test_" + "0" * 48)
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(KeyRotationWorkflow.provide_key,
                                        KeyReference(key="STRIPE_SECRET_KEY", reference=f"file:{bad}"))
        assert "does not work with stripe" in str(refused.value.cause)
        bad.write_text(old["stripe"])  # the key it runs with now is not a new one
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(KeyRotationWorkflow.provide_key,
                                        KeyReference(key="STRIPE_SECRET_KEY", reference=f"file:{bad}"))
        assert "holds the key STRIPE_SECRET_KEY already runs with" in str(refused.value.cause)
        handover.write_text(new_stripe + "\n")
        given = await handle.execute_update(KeyRotationWorkflow.provide_key, KeyReference(
            key="STRIPE_SECRET_KEY", reference=f"file:{handover}", provided_by="ops"))
        assert given.fingerprint.startswith("sha256:") and len(given.fingerprint) == 19
        status = await wait_for_phase(handle, "awaiting_approval", timeout=60)
        assert "revoke STRIPE_SECRET_KEY (stripe) in the provider's dashboard first" in status.timeline[-1].message
        assert vercel.live_env("prj_shop")["STRIPE_SECRET_KEY"] == new_stripe
        stripe.roll(old["stripe"])  # the person rolls the old key in the Dashboard, then approves
        await handle.execute_update(KeyRotationWorkflow.approve, LEAD)
        result = await handle.result()
        histories = []
        async for execution in client.list_workflows(f"TaskQueue = '{task_queue}'"):
            history = await client.get_workflow_handle(execution.id, run_id=execution.run_id).fetch_history()
            histories.append(history_text(history))
    assert result.outcome == "rotated", result.message
    assert any("old STRIPE_SECRET_KEY: refused" in e.message for e in result.timeline)
    [new_sid] = twilio.created
    values = [old["secret"], old["stripe"], new_stripe, twilio.keys[new_sid]]
    assert any('"KeyRotationWorkflow"' in text for text in histories)
    assert any(twilio.created[0] in text for text in histories)  # decoded payloads: ids are there, keys are not
    assert_keys_only_in_the_store(values, histories, result, slack, caplog.records, tmp_path,
                                  skip=lambda path: path.parent == handover.parent)
    assert (Path(result.artifact_dir) / "postmortem.md").exists()
    said = json.dumps(slack.messages)
    assert "hand it over" in said and "keys rotated" in said  # the ask for the key and the outcome


async def test_dry_run_and_unknown_key(client, task_queue, shop, vercel, twilio):
    config, _ = shop
    async with running_worker(client, config, task_queue):
        dry = await (await start(client, task_queue, dry_run=True)).result()
        assert dry.outcome == "dry_run" and [i.create for i in dry.plan] == ["api", "person"]
        with pytest.raises(WorkflowFailureError) as failure:
            await (await start(client, task_queue, keys=["OPENAI_API_KEY"])).result()
    assert "no key 'OPENAI_API_KEY'" in str(failure.value.cause.cause)
    assert "configured: TWILIO_API_SECRET, STRIPE_SECRET_KEY" in str(failure.value.cause.cause)
    assert twilio.created == [] and vercel.redeploys == 0
