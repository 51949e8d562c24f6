"""A contract server for the Atlassian Statuspage incidents API (`reference/external-apis.md`).

`Authorization: OAuth <api_key>`; create `POST /v1/pages/{page}/incidents`, update
`PATCH /v1/pages/{page}/incidents/{id}`, list `GET /v1/pages/{page}/incidents/unresolved`, with
bodies `{"incident": {...}}`. Errors: 401 bad key, 404 unknown page or incident, 422 invalid
status or a create without `name`, 429 with Retry-After when a test queues one. Every component
status an incident sets is kept in `component_history`, so a test sees the outage as well as the
recovery.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

STATUSES = ("investigating", "identified", "monitoring", "resolved")
COMPONENT_STATUSES = ("operational", "under_maintenance", "degraded_performance", "partial_outage", "major_outage")


@dataclass
class FakeStatuspage:
    api_key: str = "sp-test-key"
    page_id: str = "page1"
    incidents: dict[str, dict] = field(default_factory=dict)
    components: dict[str, str] = field(default_factory=lambda: {"cmp_web": "operational"})
    component_history: dict[str, list[str]] = field(default_factory=dict)
    inject: deque = field(default_factory=deque)
    create_delay: float = 0.0  # seconds between storing a new incident and answering: room for a crash
    ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def app(self) -> Starlette:
        async def handle(request: Request) -> JSONResponse:
            if request.headers.get("authorization") != f"OAuth {self.api_key}":
                return JSONResponse({"error": "Could not authenticate"}, status_code=401)
            if self.inject:
                status = self.inject.popleft()
                return JSONResponse({"error": "Rate limited"}, status_code=status, headers={"Retry-After": "1"})
            page = request.path_params["page"]
            if page != self.page_id:
                return JSONResponse({"error": "Page not found"}, status_code=404)
            rest = request.path_params.get("rest", "")
            if request.method == "GET" and rest == "unresolved":
                return JSONResponse([i for i in self.incidents.values() if i["status"] != "resolved"])
            body = json.loads(await request.body() or b"{}").get("incident")
            if not isinstance(body, dict):
                return JSONResponse({"error": "incident is missing"}, status_code=422)
            if body.get("status") and body["status"] not in STATUSES:
                return JSONResponse({"error": f"Status {body['status']} is not valid"}, status_code=422)
            for component, state in (body.get("components") or {}).items():
                if component not in self.components or state not in COMPONENT_STATUSES:
                    return JSONResponse({"error": f"Invalid component {component}"}, status_code=422)
            now = datetime.now(timezone.utc).isoformat()
            if request.method == "POST" and not rest:
                if not str(body.get("name") or "").strip():
                    return JSONResponse({"error": ["Name can't be blank"]}, status_code=422)
                incident_id = f"inc{next(self.ids)}"
                incident = {"id": incident_id, "page_id": page, "name": body["name"],
                            "status": body.get("status", "investigating"), "impact": body.get("impact_override", "none"),
                            "created_at": now, "updated_at": now, "incident_updates": [],
                            "metadata": body.get("metadata") or {}}
                self.incidents[incident_id] = incident
                status_code = 201
                if self.create_delay:
                    await asyncio.sleep(self.create_delay)
            elif request.method == "PATCH" and rest in self.incidents:
                incident = self.incidents[rest]
                incident.update({k: body[k] for k in ("name", "status") if k in body})
                incident["updated_at"] = now
                status_code = 200
            else:
                return JSONResponse({"error": "Incident not found"}, status_code=404)
            incident["incident_updates"].append({"status": incident["status"], "body": body.get("body", ""),
                                                 "created_at": now})
            for component, state in (body.get("components") or {}).items():
                self.components[component] = state
                self.component_history.setdefault(component, []).append(state)
            return JSONResponse(incident, status_code=status_code)

        return Starlette(routes=[
            Route("/v1/pages/{page}/incidents", handle, methods=["POST"]),
            Route("/v1/pages/{page}/incidents/{rest}", handle, methods=["GET", "PATCH"]),
        ])
