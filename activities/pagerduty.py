"""PagerDuty Events API v2: page on-call (trigger), and acknowledge / resolve the same alert.

Idempotent: each event has our key, claimed in the state store (activities/state.py) before it
is sent and recorded once PagerDuty accepted it, so a retry or a second worker never sends it
again. PagerDuty itself merges events with the
same `dedup_key` into one alert, which is what `acknowledge` and `resolve` close.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.common import ConfigSource, fail, http_client, resolve_secret
from workflows.models import PagerDutyRequest

# PagerDuty suggests retrying a rate-limited event 30 s later.
RATE_LIMIT_DELAY = timedelta(seconds=30)


def event_body(request: PagerDutyRequest, routing_key: str) -> dict:
    body: dict = {"routing_key": routing_key, "event_action": request.action, "dedup_key": request.dedup_key}
    if request.action == "trigger":  # acknowledge and resolve need only the dedup key
        body["payload"] = {"summary": request.summary[:1024], "source": request.service, "severity": request.severity,
                           "timestamp": datetime.now(timezone.utc).isoformat(), "component": request.service,
                           "class": "incident", "custom_details": request.details}
    return body


class PagerDutyActivities:
    def __init__(self, config: ConfigSource):
        self._config = config

    @activity.defn(name="pagerduty.event")
    async def event(self, request: PagerDutyRequest) -> bool:
        """Send one event; False when the service has no PagerDuty configured."""
        target = self._config.service(request.service).notify.pagerduty
        if target is None:
            return False
        routing_key = resolve_secret(target.routing_key_env, request.service)
        async with self._config.state.once("pagerduty", f"{request.service}/{request.key}") as once:
            if not once.done:  # else accepted on an earlier attempt
                once.record(await self._send(target, request, routing_key))
        return True

    @staticmethod
    async def _send(target, request: PagerDutyRequest, routing_key: str) -> str:
        async with http_client(base_url=target.api_url, timeout=10) as client:
            try:
                response = await client.post("/v2/enqueue", json=event_body(request, routing_key))
            except httpx.HTTPError as exc:
                raise ApplicationError(f"PagerDuty unreachable: {type(exc).__name__}") from None
        if response.status_code == 429:
            delay = float(response.headers.get("Retry-After", RATE_LIMIT_DELAY.total_seconds()))
            raise ApplicationError("PagerDuty rate limit", next_retry_delay=timedelta(seconds=delay))
        if response.status_code == 400:
            raise fail(f"PagerDuty refused the {request.action} event for {request.service} as invalid: "
                       f"{response.text[:200]}")
        if response.status_code != 202:
            raise ApplicationError(f"PagerDuty answered HTTP {response.status_code}")
        return response.json().get("dedup_key", request.dedup_key)
