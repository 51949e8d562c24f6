"""Supabase's Management API: the point-in-time window of a project and its in-place PITR restore.

The restore is started once: a retry first asks whether the project is already RESTORING (an
earlier attempt's POST went through) and then only waits for it.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.common import ConfigSource, fail, resolve_secret
from workflows.config import SupabasePitr
from workflows.models import PitrWindow, ServiceRef, SupabaseRestoreRequest


class SupabaseActivities:
    def __init__(self, config: ConfigSource):
        self._config = config

    def _target(self, service: str) -> SupabasePitr:
        database = self._config.service(service).database
        if database is None or database.pitr is None or database.pitr.supabase is None:
            raise fail(f"service {service!r} has no database.pitr.supabase configured", kind="ConfigError")
        return database.pitr.supabase

    async def _call(self, client: httpx.AsyncClient, target: SupabasePitr, service: str, method: str, path: str,
                    body: dict | None = None) -> httpx.Response:
        url = f"{target.api_url.rstrip('/')}/v1/projects/{target.project_ref}{path}"
        headers = {"Authorization": f"Bearer {resolve_secret(target.token_env, service)}"}
        for _ in range(5):
            try:
                response = await client.request(method, url, headers=headers, json=body)
            except httpx.HTTPError as exc:
                raise ApplicationError(f"Supabase API unreachable: {type(exc).__name__}") from None
            if response.status_code != 429:
                break
            await asyncio.sleep(min(float(response.headers.get("retry-after", "1")), 30))
        message = _message(response)
        if response.status_code == 401:
            raise fail(f"Supabase refused the access token in {target.token_env} (401)", kind="SupabaseRefused")
        if response.status_code == 404:
            raise fail(f"Supabase project {target.project_ref} not found (404)", kind="SupabaseRefused")
        if 400 <= response.status_code < 500:
            raise fail(f"Supabase refused {method} {path or '/'} ({response.status_code}): {message}",
                       kind="SupabaseRefused")
        if response.status_code >= 500:
            raise ApplicationError(f"Supabase API error {response.status_code}: {message}")
        return response

    @activity.defn(name="supabase.pitr_window")
    async def pitr_window(self, request: ServiceRef) -> PitrWindow:
        target = self._target(request.service)
        async with httpx.AsyncClient(timeout=30) as client:
            data = (await self._call(client, target, request.service, "GET", "/database/backups")).json()
        window = data.get("physical_backup_data") or {}
        stamp = lambda key: datetime.fromtimestamp(window[key], timezone.utc) if window.get(key) else None  # noqa: E731
        return PitrWindow(enabled=bool(data.get("pitr_enabled")), earliest=stamp("earliest_physical_backup_date_unix"),
                          latest=stamp("latest_physical_backup_date_unix"))

    @activity.defn(name="supabase.restore_pitr")
    async def restore_pitr(self, request: SupabaseRestoreRequest) -> str:
        """Start the restore (once) and wait until the project is ACTIVE_HEALTHY again."""
        target = self._target(request.service)
        details = activity.info().heartbeat_details
        posted = bool(details and details[0].get("posted"))
        async with httpx.AsyncClient(timeout=30) as client:
            status = (await self._call(client, target, request.service, "GET", "")).json().get("status")
            if not posted and status != "RESTORING":
                await self._call(client, target, request.service, "POST", "/database/backups/restore-pitr",
                                 {"recovery_time_target_unix": request.target_unix})
            while True:
                activity.heartbeat({"posted": True, "status": status})
                await asyncio.sleep(target.poll_interval_seconds)
                status = (await self._call(client, target, request.service, "GET", "")).json().get("status")
                if status == "ACTIVE_HEALTHY":
                    return status
                if status not in ("RESTORING", "COMING_UP", "RESTARTING", "UNKNOWN"):
                    raise fail(f"Supabase project {target.project_ref} is {status} after the restore",
                               kind="RecoveryFailed")


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message", ""))[:300]
    except ValueError:
        return response.text[:300]
