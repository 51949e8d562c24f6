"""Who may approve: a restore on real PostgreSQL, Temporal and the real receiver, with an approver
policy. The requester and someone outside the policy are refused (on the timeline and in the audit
log); a Slack button press signed as Slack signs it approves; stale or wrongly signed presses do
nothing."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from datetime import timedelta
from urllib.parse import urlencode

import httpx
import psycopg
import pytest
import yaml
from temporalio.client import WorkflowUpdateFailedError

from activities.audit import audit_path, read_audit
from activities.common import ConfigSource
from starter.webhook import create_app
from tests.conftest import running_worker
from tests.contract.slack import RESPONSE_PATH
from tests.helpers import assert_eventually, create_database, kinds, wait_for_phase
from tests.receiver import serving
from workflows import BackupWorkflow, DatabaseRestoreWorkflow, RestoreCleanupWorkflow
from workflows.models import (ApprovalInput, BackupInput, BackupManifest, CleanupInput, CleanupResult, RestoreInput,
                              RestoreResult, RollbackStatus)

pytestmark = pytest.mark.postgres
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


def slack_press(secret: str, user: str, action: str, value: str, response_url: str, timestamp: int | None = None):
    """A block_actions request exactly as Slack sends it: form-encoded `payload`, v0 signature."""
    payload = {"type": "block_actions", "user": {"id": user, "username": user.lower()}, "api_app_id": "A0001",
               "actions": [{"action_id": action, "block_id": "approval", "value": value, "type": "button",
                            "action_ts": str(time.time())}],
               "response_url": response_url, "message": {"type": "message", "text": "Approval needed"}}
    body = urlencode({"payload": json.dumps(payload)}).encode()
    stamp = str(timestamp if timestamp is not None else int(time.time()))
    digest = hmac.new(secret.encode(), b"v0:" + stamp.encode() + b":" + body, hashlib.sha256).hexdigest()
    return body, {"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": stamp,
                  "X-Slack-Signature": f"v0={digest}"}


@pytest.fixture
def policy_config(postgres, tmp_path, monkeypatch, platform, slack):
    name, dsn = create_database(postgres, "shop")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (id int PRIMARY KEY, name text)")
        conn.execute("INSERT INTO users SELECT g, 'user ' || g FROM generate_series(1, 20) g")
    monkeypatch.setenv("TEST_SHOP_DSN", dsn)
    monkeypatch.setenv("TEST_SLACK_SIGNING", SIGNING_SECRET)
    path = tmp_path / "rollback.yaml"
    path.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"), "artifact_dir": str(tmp_path / "incidents"),
        "people": {"alice": {"slack": "UALICE", "groups": ["eng"]}, "bob": {"slack": "UBOB"},
                   "carol": {"slack": "UCAROL", "groups": ["dba"]}},
        "approvals": {"database": {"people": ["alice"], "groups": ["dba"]}},
        "slack": {"signing_secret_env": "TEST_SLACK_SIGNING"},
        "services": {"shop": {
            "app": {"provider": "docker", "docker": {"container": "unused"}},
            "health": {"url": f"{platform.url}/health", "consecutive_checks": 1, "interval_seconds": 0.1},
            "database": {"dsn_env": "TEST_SHOP_DSN", "backup_dir": str(tmp_path / "backups")},
            "notify": {"slack_webhook_env": "TEST_SLACK_WEBHOOK"},
        }}}))
    return ConfigSource(path), dsn


async def test_policy_refuses_then_a_signed_slack_press_approves(client, task_queue, policy_config, slack):
    config, dsn = policy_config
    async with running_worker(client, config, task_queue), serving(create_app(client, config, task_queue)) as url:
        manifest = await client.execute_workflow(BackupWorkflow.run, BackupInput(service="shop"),
                                                 id=f"wf-{uuid.uuid4()}", task_queue=task_queue,
                                                 result_type=BackupManifest)
        handle = await client.start_workflow(
            DatabaseRestoreWorkflow.run, RestoreInput(service="shop", source=manifest.backup_id, requested_by="alice"),
            id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=RestoreResult)
        await wait_for_phase(handle, "awaiting_approval", timeout=60)

        # the requester may not approve their own database step; bob is not in the policy
        with pytest.raises(WorkflowUpdateFailedError) as own:
            await handle.execute_update("approve", ApprovalInput(approver="alice", reason="mine", channel="cli"))
        assert "four eyes" in str(own.value.cause)
        with pytest.raises(WorkflowUpdateFailedError) as outsider:
            await handle.execute_update("approve", ApprovalInput(approver="bob", reason="sure", channel="cli"))
        assert "bob may not decide database steps" in str(outsider.value.cause) and "carol" in str(outsider.value.cause)

        # the approval request went to Slack with buttons naming this run
        asked = next(m for m in slack.messages if any(b["type"] == "actions" for b in m["blocks"]))
        buttons = next(b for b in asked["blocks"] if b["type"] == "actions")["elements"]
        assert [b["action_id"] for b in buttons] == ["approve", "reject"]
        value = buttons[0]["value"]
        # the press decides this run's swap, never a later run of the same workflow id
        assert json.loads(value) == {"workflow_id": handle.id, "step": "database swap", "run_id": handle.result_run_id}
        respond_to = f"{slack.url}{RESPONSE_PATH}carol"

        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            # stale timestamp (6 minutes old) and a wrong secret: refused, nothing decided
            body, headers = slack_press(SIGNING_SECRET, "UCAROL", "approve", value, respond_to,
                                        timestamp=int(time.time()) - 360)
            assert (await http.post("/slack/actions", content=body, headers=headers)).status_code == 401
            body, headers = slack_press("not-the-secret", "UCAROL", "approve", value, respond_to)
            assert (await http.post("/slack/actions", content=body, headers=headers)).status_code == 401
            body, headers = slack_press(SIGNING_SECRET, "UCAROL", "approve", value, respond_to)
            headers["X-Slack-Signature"] = headers["X-Slack-Signature"][:-1] + "0"  # one digit off
            assert (await http.post("/slack/actions", content=body.replace(b"approve", b"reject"),
                                    headers=headers)).status_code == 401
            status = await handle.query("status", result_type=RollbackStatus)
            assert status.waiting_for_approval == "database swap" and "approved" not in kinds(status.timeline)
            assert slack.responses == []

            # a Slack user who is nobody in the config: answered, refused, nothing decided
            body, headers = slack_press(SIGNING_SECRET, "USTRANGER", "approve", value, respond_to)
            assert (await http.post("/slack/actions", content=body, headers=headers)).status_code == 200
            await assert_eventually(lambda: _async(len(slack.responses) == 1), message="stranger answered")
            assert "not in the approver list" in slack.responses[0]["text"]
            assert slack.responses[0]["replace_original"] is False

            # carol, signed correctly: answered at once, then the Update approves
            body, headers = slack_press(SIGNING_SECRET, "UCAROL", "approve", value, respond_to)
            started = time.monotonic()
            answer = await http.post("/slack/actions", content=body, headers=headers)
            assert answer.status_code == 200 and time.monotonic() - started < 3
            result = await handle.result()

    assert result.outcome == "restored"
    refused = [e for e in result.timeline if e.kind.value == "refused"]
    assert [e.actor for e in refused] == ["alice", "bob"]
    approved = next(e for e in result.timeline if e.kind.value == "approved")
    assert approved.actor == "carol" and approved.data["channel"] == "slack"
    await assert_eventually(lambda: _async(len(slack.responses) == 2), message="message updated")
    assert slack.responses[1]["replace_original"] is True and "approved by carol" in slack.responses[1]["text"]

    audit = read_audit(audit_path(config.config))
    mine = [e for e in audit if e.workflow_id == handle.id]
    assert [e.event for e in mine] == ["started", "refused", "refused", "refused", "approved", "ended"], mine
    assert (mine[0].actor, mine[4].actor, mine[4].channel) == ("alice", "carol", "slack")
    assert mine[3].actor == "slack:USTRANGER"
    assert [(e.actor, e.channel) for e in mine[1:3]] == [("alice", "cli"), ("bob", "cli")]


async def _async(value):
    return value


async def test_no_way_around_the_policy(client, task_queue, policy_config):
    """An approver named in a start input, a decision sent for another step, a cleanup that drops
    databases: each goes through the same policy as the checkpoint itself."""
    config, dsn = policy_config
    async with running_worker(client, config, task_queue):
        manifest = await client.execute_workflow(BackupWorkflow.run, BackupInput(service="shop"),
                                                 id=f"wf-{uuid.uuid4()}", task_queue=task_queue,
                                                 result_type=BackupManifest)
        # started from the UI with `approved_by` (meant for a parent incident's checkpoint): it asks all the same
        handle = await client.start_workflow(
            DatabaseRestoreWorkflow.run, RestoreInput(service="shop", source=manifest.backup_id, requested_by="bob",
                                                      approved_by="carol"),
            id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=RestoreResult)
        status = await wait_for_phase(handle, "awaiting_approval", timeout=60)
        assert any("approved_by 'carol' in the input ignored" in e.message for e in status.timeline)
        # a decision for another step (a stale button, a re-run command) decides nothing
        with pytest.raises(WorkflowUpdateFailedError) as other:
            await handle.execute_update("approve", ApprovalInput(approver="carol", reason="ok", channel="cli",
                                                                 step="run down migrations"))
        assert "now waits for 'database swap'" in str(other.value.cause)
        await handle.execute_update("approve", ApprovalInput(approver="carol", reason="ok", channel="cli",
                                                             step="database swap"))
        assert (await handle.result()).outcome == "restored"

        # the database the restore kept is dropped only by someone the database policy admits,
        # and not by the one who asked for the cleanup (four eyes)
        cleanup = await client.start_workflow(
            RestoreCleanupWorkflow.run, CleanupInput(service="shop", older_than=timedelta(0), requested_by="carol"),
            id=f"wf-{uuid.uuid4()}", task_queue=task_queue, result_type=CleanupResult)
        await wait_for_phase(cleanup, "awaiting_approval", timeout=60)
        for who, why in (("bob", "bob may not decide database steps"), ("carol", "four eyes")):
            with pytest.raises(WorkflowUpdateFailedError) as refused:
                await cleanup.execute_update("approve", ApprovalInput(approver=who, reason="go", channel="cli"))
            assert why in str(refused.value.cause)
        await cleanup.execute_update("approve", ApprovalInput(approver="alice", reason="go", channel="cli"))
        done = await cleanup.result()
    assert done.outcome == "cleaned" and len(done.dropped) == 1, done.message
    assert [e.actor for e in done.timeline if e.kind.value == "refused"] == ["bob", "carol"]
