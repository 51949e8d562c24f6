"""Supabase's Management API: the point-in-time window of a project and its in-place PITR restore,
and the project's API keys for key rotation (runbook 002).

The restore is started once: a retry first asks whether the project is already RESTORING (an
earlier attempt's POST went through) and then only waits for it.

API keys: `POST /v1/projects/{ref}/api-keys?reveal=true` `{type, name}` answers 201 with the new
key's `id` and `api_key` (the value); `DELETE /v1/projects/{ref}/api-keys/{id}` revokes one
(`was_compromised=true` only for a compromised key); the legacy anon and service_role keys cannot
be created, only disabled together (`PUT /v1/projects/{ref}/api-keys/legacy?enabled=false`). A key
is tested with `GET https://{ref}.supabase.co/rest/v1/` and header `apikey: <key>`. The Management
API allows 60 requests a minute: a 429 is waited out (Retry-After) a few times.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.common import ConfigSource, fail, http_client, resolve_secret
from workflows.config import RotatedKey, SupabasePitr
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
        response = await _send(client, method, url, headers, body)
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
        async with http_client(timeout=30) as client:
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
        async with http_client(timeout=30) as client:
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


async def _send(client: httpx.AsyncClient, method: str, url: str, headers: dict[str, str],
                body: dict | None = None) -> httpx.Response:
    """One Management API request; a 429 (60 requests a minute) is waited out a few times."""
    for _ in range(5):
        try:
            response = await client.request(method, url, headers=headers, json=body)
        except httpx.HTTPError as exc:
            raise ApplicationError(f"Supabase API unreachable: {type(exc).__name__}") from None
        if response.status_code != 429:
            break
        await asyncio.sleep(min(float(response.headers.get("retry-after", "1")), 30))
    return response


class SupabaseKeys:
    """A project's API keys, for activities/keys.py. `kind` secret / publishable: created and
    revoked by id; legacy_anon / legacy_service_role: the replacement is a new publishable /
    secret key, and "revoking" the old one disables both legacy keys of the project."""

    can_create = True
    can_revoke = True

    def __init__(self, spec: RotatedKey, service: str):
        self.spec, self.service = spec, service
        self.legacy = (spec.kind or "").startswith("legacy_")
        self.needs_key_id = not self.legacy

    @property
    def new_type(self) -> str:
        return {"legacy_anon": "publishable", "legacy_service_role": "secret"}.get(self.spec.kind, self.spec.kind)

    async def _manage(self, client: httpx.AsyncClient, method: str, path: str, params: dict | None = None,
                      body: dict | None = None) -> httpx.Response:
        url = f"{self.spec.base_url()}/v1/projects/{self.spec.project}/api-keys{path}"
        if params:
            url = str(httpx.URL(url, params=params))
        token = resolve_secret(self.spec.admin_token_env or "", self.service)
        response = await _send(client, method, url, {"Authorization": f"Bearer {token}"}, body)
        if response.status_code == 429 or response.status_code >= 500:
            raise ApplicationError(f"Supabase API answered {response.status_code} ({_message(response)}); retrying")
        return response

    def _refused(self, response: httpx.Response, what: str) -> ApplicationError:
        if response.status_code == 401:
            return fail(f"Supabase refused the access token in {self.spec.admin_token_env} (401) while trying to "
                        f"{what}; nothing was changed there", kind="ProviderRefused")
        return fail(f"Supabase refused to {what} ({response.status_code}: {_message(response)})",
                    kind="ProviderRefused")

    async def create(self, client: httpx.AsyncClient, name: str) -> tuple[str, str]:
        # Supabase key names are lowercase letters, digits and underscores, not starting with a digit;
        # the time tells this rotation's key from the last one's in the dashboard
        words = "_".join("".join(c if c.isascii() and c.isalnum() else " " for c in name.lower()).split())
        slug = f"k_{words}"[:48] if words[:1].isdigit() else words[:48]  # 64 characters at most with the time
        slug = f"{slug}_{time.strftime('%Y%m%d%H%M%S', time.gmtime())}"
        response = await self._manage(client, "POST", "", {"reveal": "true"}, {"type": self.new_type, "name": slug})
        if response.status_code != 201:
            raise self._refused(response, f"create a {self.new_type} key for {self.spec.name} in project "
                                          f"{self.spec.project}")
        body = response.json()
        return body["id"], body["api_key"]

    async def revoke(self, client: httpx.AsyncClient, key_id: str | None, compromised: bool = False) -> bool:
        """True when this call revoked the key, False when it was already gone (a retry)."""
        if self.legacy:
            response = await self._manage(client, "PUT", "/legacy", {"enabled": "false"})
            if response.status_code == 200:
                return True
            raise self._refused(response, f"disable the legacy API keys of project {self.spec.project}")
        params = {"was_compromised": "true", "reason": f"compromised: rollback keys rotate {self.service}"} \
            if compromised else {"reason": f"rotated: rollback keys rotate {self.service}"}
        response = await self._manage(client, "DELETE", f"/{key_id}", params)
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise self._refused(response, f"delete API key {key_id} of {self.spec.name}")

    def test_url(self) -> str:
        return self.spec.test_url or f"https://{self.spec.project}.supabase.co/rest/v1/"

    async def test(self, client: httpx.AsyncClient, key_id: str | None, value: str) -> tuple[bool, str]:
        url = self.test_url()
        try:
            response = await client.get(url, headers={"apikey": value})
        except httpx.HTTPError as exc:
            raise ApplicationError(f"Supabase project {self.spec.project} unreachable: {type(exc).__name__}") from None
        if response.status_code == 429 or response.status_code >= 500:
            raise ApplicationError(f"GET {url} answered {response.status_code}; retrying")
        return response.is_success, f"GET {url} with apikey: {response.status_code}"


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message", ""))[:300]
    except ValueError:
        return response.text[:300]
