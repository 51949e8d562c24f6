"""Slack interactivity: Approve / Reject buttons on approval requests become Temporal Updates.

Every request is verified before its body is read as anything (Slack's v0 signing: HMAC-SHA256
over `v0:{X-Slack-Request-Timestamp}:{raw body}` with the app's signing secret, timestamp within
5 minutes), the Slack user is mapped to a person in the config's `people:`, and the Update is
sent with that person and channel `slack`; the workflow's approver policy then decides. Slack
wants an answer within 3 s, so the Update runs after the 200 and its outcome replaces the
message through `response_url`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time
import uuid
from datetime import datetime, timezone
from urllib.parse import parse_qs

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.service import RPCError

from activities.audit import append_audit, audit_path
from activities.common import ConfigSource, http_client
from activities.notify import escape_mrkdwn
from workflows.models import ApprovalDecision, ApprovalInput, AuditEntry

log = logging.getLogger("rollback.slack")
MAX_SKEW_SECONDS = 300
MAX_BODY = 64 * 1024


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """Slack's v0 request signature."""
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def verified(secret: str, headers, body: bytes, now: float | None = None) -> bool:
    timestamp, sent = headers.get("x-slack-request-timestamp", ""), headers.get("x-slack-signature", "")
    if not timestamp.isdigit() or abs((now or time.time()) - int(timestamp)) > MAX_SKEW_SECONDS:
        return False
    return any(hmac.compare_digest(signature(s.strip(), timestamp, body), sent) for s in secret.split(",") if s.strip())


def slack_routes(client: Client, config: ConfigSource) -> list[Route]:
    async def actions(request: Request) -> Response:
        settings = config.config
        env_name = settings.slack.signing_secret_env if settings.slack else None
        secret = os.environ.get(env_name or "", "")
        body = await request.body()
        if len(body) > MAX_BODY:
            return JSONResponse({"error": "too large"}, status_code=413)
        if not secret or not verified(secret, request.headers, body):
            log.warning("slack action refused: bad or stale signature")
            return JSONResponse({"error": "invalid signature"}, status_code=401)
        try:
            payload = json.loads(parse_qs(body.decode())["payload"][0])
            action = payload["actions"][0]
            user = payload["user"]["id"]
            target = json.loads(action["value"])
            workflow_id, step, run_id = target["workflow_id"], target.get("step", ""), target.get("run_id")
            verb = action["action_id"]
        except (KeyError, IndexError, ValueError, TypeError, UnicodeDecodeError):
            return JSONResponse({"error": "not a block_actions payload"}, status_code=400)
        if verb not in ("approve", "reject"):
            return JSONResponse({"error": f"unknown action {verb!r}"}, status_code=400)
        person = next((name for name, p in settings.people.items() if p.slack == user), None)
        task = BackgroundTask(decide, settings, workflow_id, run_id, step, verb, user, person,
                              payload.get("response_url"))
        return Response(status_code=200, background=task)

    async def decide(settings, workflow_id, run_id, step, verb, user, person, response_url) -> None:
        if person is None:
            text = f"Slack user {user} is not in the approver list; nothing was decided"
            audit_refusal(settings, workflow_id, step, verb, f"slack:{user}", text)
        else:
            # the button's own run and step: an old message never decides a later run, or another step
            decision = ApprovalInput(approver=person, reason=f"{verb}d in Slack", channel="slack", slack_user=user,
                                     step=step or None)
            try:
                answer = await client.get_workflow_handle(workflow_id, run_id=run_id or None).execute_update(
                    verb, decision, result_type=ApprovalDecision)
                text = f"{answer.step}: {verb}d by {person}" + (
                    f"; waiting for {answer.still_needed} more approver(s)" if answer.still_needed else "")
            except WorkflowUpdateFailedError as exc:
                text = f"{person} could not {verb}: {getattr(exc.cause, 'message', None) or exc.cause}"
                if "NotAllowed" not in str(getattr(exc.cause, "type", "")):
                    audit_refusal(settings, workflow_id, step, verb, person, text)  # the workflow did not record it
            except RPCError as exc:
                text = f"{person} could not {verb}: {exc.message}"
        log.info("slack action workflow=%s verb=%s user=%s person=%s: %s", workflow_id, verb, user, person, text)
        if response_url:
            await respond(response_url, text, replace=person is not None)

    return [Route("/slack/actions", actions, methods=["POST"])]


def audit_refusal(settings, workflow_id: str, step: str, verb: str, actor: str, why: str) -> None:
    append_audit(audit_path(settings), [AuditEntry(
        id=str(uuid.uuid4()), at=datetime.now(timezone.utc), event="refused", workflow_id=workflow_id, step=step,
        actor=actor, channel="slack", detail={"decision": verb, "why": why})])


async def respond(response_url: str, text: str, replace: bool) -> None:
    """The message in place shows the outcome (a refusal for an unknown user is added beside it)."""
    body = {"replace_original": replace, "text": text,
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": escape_mrkdwn(text)}}]}
    try:
        async with http_client(timeout=10) as http:
            await http.post(response_url, json=body)
    except httpx.HTTPError as exc:
        log.warning("could not update the Slack message: %s", type(exc).__name__)
