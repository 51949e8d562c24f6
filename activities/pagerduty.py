"""PagerDuty Events API v2: page on-call (trigger), and acknowledge / resolve the same alert.

Idempotent: each event has our key, recorded in a state file once PagerDuty accepted it, so a
retried activity or a worker crash never pages twice. PagerDuty itself merges events with the
same `dedup_key` into one alert, which is what `acknowledge` and `resolve` close.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.common import ConfigSource, fail, read_json, resolve_secret, write_json_atomic
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
        sent_file = self._config.state_path("pagerduty", f"{request.service}.json")
        sent = read_json(sent_file, {})
        if request.key in sent:
            return True  # accepted on an earlier attempt
        routing_key = resolve_secret(target.routing_key_env, request.service)
        async with httpx.AsyncClient(base_url=target.api_url, timeout=10) as client:
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
        sent[request.key] = response.json().get("dedup_key", request.dedup_key)
        write_json_atomic(sent_file, sent)
        return True
