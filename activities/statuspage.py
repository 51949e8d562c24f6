"""Atlassian Statuspage: open, update and resolve one public incident per rollback.

Idempotent: the incident carries our key in its metadata and its id is kept in the state store
(activities/state.py), claimed before the create, so a retried activity or a second worker
updates the incident it created instead of opening another.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.common import ConfigSource, fail, http_client, resolve_secret
from workflows.models import StatusPageRequest

COMPONENT_FOR_STATUS = {"investigating": "partial_outage", "identified": "partial_outage",
                        "monitoring": "degraded_performance", "resolved": "operational"}


class StatuspageActivities:
    def __init__(self, config: ConfigSource):
        self._config = config

    @activity.defn(name="statuspage.post")
    async def post(self, request: StatusPageRequest) -> str | None:
        """Create or update the rollback's incident; None when no status page is configured."""
        target = self._config.service(request.service).notify.statuspage
        if target is None:
            return None
        key = resolve_secret(target.api_key_env, request.service)
        incident: dict = {"status": request.status, "body": request.body}
        if target.component_id:
            incident["components"] = {target.component_id: COMPONENT_FOR_STATUS[request.status]}
            incident["component_ids"] = [target.component_id]
        # each update once too: a retry after the PATCH (or a second worker) must not post it again
        body_hash = hashlib.sha256(request.body.encode()).hexdigest()[:16]
        update_key = f"{request.service}/{request.key}/{request.status}/{body_hash}"
        async with http_client(base_url=target.api_url, headers={"Authorization": f"OAuth {key}"},
                               timeout=20) as client:
            async with self._config.state.once("statuspage", f"{request.service}/{request.key}") as once:
                incident_id = once.result
                if not once.done:  # a crash may have come between create and recording it
                    unresolved = await self._call(client, "GET", f"/pages/{target.page_id}/incidents/unresolved")
                    incident_id = next((i["id"] for i in unresolved
                                        if (i.get("metadata") or {}).get("rollback", {}).get("key") == request.key),
                                       None)
                    if incident_id is None:
                        incident.update({"name": request.name, "impact_override": request.impact,
                                         "deliver_notifications": True, "metadata": {"rollback": {"key": request.key}}})
                        created = await self._call(client, "POST", f"/pages/{target.page_id}/incidents",
                                                   {"incident": incident})
                        once.record(created["id"])
                        incident_id = created["id"]
                        await self._config.state.aupdate("statuspage-update", update_key, lambda _: incident_id)
                        return incident_id
                    once.record(incident_id)
            async with self._config.state.once("statuspage-update", update_key) as once:
                if not once.done:
                    await self._call(client, "PATCH", f"/pages/{target.page_id}/incidents/{incident_id}",
                                     {"incident": incident})
                    once.record(incident_id)
        return incident_id

    @staticmethod
    async def _call(client: httpx.AsyncClient, method: str, path: str, body: dict | None = None):
        try:
            response = await client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise ApplicationError(f"Statuspage unreachable: {type(exc).__name__}") from None
        if response.status_code in (420, 429):
            delay = float(response.headers.get("Retry-After", "5"))
            raise ApplicationError("Statuspage rate limit", next_retry_delay=timedelta(seconds=delay))
        if response.status_code in (401, 403, 404, 422):
            raise fail(f"Statuspage refused {method} {path}: HTTP {response.status_code} {response.text[:200]}")
        if response.status_code >= 300:
            raise ApplicationError(f"Statuspage answered HTTP {response.status_code}")
        return response.json()
