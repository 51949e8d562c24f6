"""A contract server for the PagerDuty Events API v2 (`reference/external-apis.md`).

`POST /v2/enqueue` with `{"routing_key", "event_action", "dedup_key", "payload": {...}}`:
202 `{"status": "success", "message": "Event processed", "dedup_key"}`; 400 `invalid event` for a
missing routing key, an unknown action, or a trigger without payload summary/source/severity (or a
severity other than critical|error|warning|info); 429 when a test queues one. A trigger opens an
alert per dedup_key, acknowledge and resolve move it; events for unknown keys are accepted and
change nothing, as PagerDuty does.
"""

from __future__ import annotations

import json
import uuid
from collections import deque
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

ACTIONS = ("trigger", "acknowledge", "resolve")
SEVERITIES = ("critical", "error", "warning", "info")


@dataclass
class FakePagerDuty:
    routing_key: str = "R0UTINGKEY0000000000000000000000"
    events: list[dict] = field(default_factory=list)
    alerts: dict[str, str] = field(default_factory=dict)  # dedup_key -> triggered | acknowledged | resolved
    inject: deque = field(default_factory=deque)

    def app(self) -> Starlette:
        def invalid(*errors: str) -> JSONResponse:
            return JSONResponse({"status": "invalid event", "message": "Event object is invalid",
                                 "errors": list(errors)}, status_code=400)

        async def enqueue(request: Request) -> JSONResponse:
            if self.inject:
                status = self.inject.popleft()
                return JSONResponse({"status": "throttle event", "message": "Requests for this service are "
                                     "arriving too quickly.  Please retry later."}, status_code=status)
            try:
                body = json.loads(await request.body())
            except ValueError:
                return invalid("Could not parse JSON")
            if not isinstance(body, dict) or body.get("routing_key") != self.routing_key:
                return invalid("'routing_key' is missing or invalid")
            action = body.get("event_action")
            if action not in ACTIONS:
                return invalid("'event_action' is invalid (must be one of trigger, acknowledge, resolve)")
            key = body.get("dedup_key")
            if action != "trigger" and not key:
                return invalid("'dedup_key' is required for acknowledge and resolve")
            if action == "trigger":
                payload = body.get("payload") or {}
                missing = [f for f in ("summary", "source", "severity") if not payload.get(f)]
                if missing:
                    return invalid(*(f"'payload.{f}' is missing or blank" for f in missing))
                if payload["severity"] not in SEVERITIES:
                    return invalid("'payload.severity' must be one of critical, error, warning, info")
                key = key or uuid.uuid4().hex
                if self.alerts.get(key) in (None, "resolved"):
                    self.alerts[key] = "triggered"
            elif key in self.alerts and self.alerts[key] != "resolved":
                self.alerts[key] = "acknowledged" if action == "acknowledge" else "resolved"
            self.events.append(body)
            return JSONResponse({"status": "success", "message": "Event processed", "dedup_key": key},
                                status_code=202)

        return Starlette(routes=[Route("/v2/enqueue", enqueue, methods=["POST"])])
