"""Slack incoming webhooks: one message per idempotency key, even when retried."""

from __future__ import annotations

import json
from datetime import timedelta

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.common import ConfigSource, fail, http_client, resolve_secret
from workflows.models import NotifyRequest


def escape_mrkdwn(text: str) -> str:
    """Slack's three control characters as entities: text from alerts (labels, summaries) cannot
    ping <!channel>, mention people or make links."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(request: NotifyRequest) -> dict:
    text = escape_mrkdwn(request.text)
    blocks: list[dict] = [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
    if request.fields:
        blocks.append({"type": "section", "fields": [
            {"type": "mrkdwn", "text": f"*{escape_mrkdwn(k)}*\n{escape_mrkdwn(v)}"} for k, v in request.fields.items()]})
    if request.approval_for:
        # Block Kit buttons; the receiver's /slack/actions turns a press into the approve/reject Update
        value = json.dumps({"workflow_id": request.approval_for, "step": request.approval_step or "",
                            **({"run_id": request.approval_run} if request.approval_run else {})})
        blocks.append({"type": "actions", "block_id": "approval", "elements": [
            {"type": "button", "action_id": "approve", "style": "primary", "value": value,
             "text": {"type": "plain_text", "text": "Approve"}},
            {"type": "button", "action_id": "reject", "style": "danger", "value": value,
             "text": {"type": "plain_text", "text": "Reject"}}]})
    return {"text": text, "blocks": blocks}


class NotifyActivities:
    def __init__(self, config: ConfigSource):
        self._config = config

    @activity.defn(name="notify.slack")
    async def slack(self, request: NotifyRequest) -> bool:
        """Post to the service's Slack webhook; False when none is configured."""
        notify = self._config.service(request.service).notify
        env_name = (notify.escalation_slack_webhook_env if request.escalation else None) or notify.slack_webhook_env
        if not env_name:
            return False
        url = resolve_secret(env_name, request.service)
        # claimed in the shared store before posting, recorded after: once across workers
        async with self._config.state.once("slack", f"{request.service}/{request.key}") as once:
            if not once.done:
                await self._post(url, request)
                once.record(True)
        return True

    @staticmethod
    async def _post(url: str, request: NotifyRequest) -> None:
        async with http_client(timeout=10) as client:
            try:
                response = await client.post(url, json=slack_payload(request))
            except httpx.HTTPError as exc:
                raise ApplicationError(f"Slack webhook unreachable: {type(exc).__name__}") from None
        if response.status_code == 429:
            retry_after = float(response.headers.get("Retry-After", "1"))
            raise ApplicationError("Slack rate limit", next_retry_delay=timedelta(seconds=retry_after))
        if response.status_code in (400, 403, 404, 410):
            raise fail(f"Slack rejected the message for {request.service}: HTTP {response.status_code} {response.text[:100]}")
        if response.status_code != 200:
            raise ApplicationError(f"Slack answered HTTP {response.status_code}")
