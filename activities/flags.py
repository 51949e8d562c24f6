"""Kill switches in runtime flag stores the app reads while it runs (runbook 001's
PROCESSING_ENABLED, SCHEDULER_ENABLED): a PostgreSQL flags table, or an HTTP flag endpoint
(the receiver serves one at `/flags/<service>/<name>`).

Reading and setting are separate activities so the values found before a rollback are in the
workflow's history before anything is flipped, and can be put back exactly, "not set" included.
"""

from __future__ import annotations

import httpx
import psycopg
from psycopg import sql
from temporalio import activity

from activities.common import ConfigSource, fail, http_client, resolve_secret
from workflows.config import KillSwitch
from workflows.models import FlagsRequest, ServiceRef


def _table(switch: KillSwitch) -> sql.Composable:
    return sql.Identifier(*switch.table.split("."))


def _postgres_ddl(switch: KillSwitch) -> sql.Composable:
    return sql.SQL("CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY, value text, "
                   "updated_at timestamptz NOT NULL DEFAULT now(), updated_by text)").format(_table(switch))


class FlagActivities:
    def __init__(self, config: ConfigSource):
        self._config = config

    def _switches(self, service: str, names=None) -> list[KillSwitch]:
        switches = self._config.service(service).kill_switches
        if names is not None:
            unknown = set(names) - {s.name for s in switches}
            if unknown:
                raise fail(f"service {service!r} has no kill switch {', '.join(sorted(unknown))}", kind="ConfigError")
            switches = [s for s in switches if s.name in names]
        return switches

    def _dsn(self, service: str, switch: KillSwitch) -> str:
        database = self._config.service(service).database
        env = switch.dsn_env or (database.dsn_env if database else None)
        if env is None:
            raise fail(f"kill switch {switch.name!r} of {service!r} is in PostgreSQL but no DSN is configured",
                       kind="ConfigError")
        return resolve_secret(env, service)

    async def _http(self, service: str, switch: KillSwitch, method: str, value: str | None = None) -> str | None:
        headers = {}
        if switch.token_env:
            headers["Authorization"] = f"Bearer {resolve_secret(switch.token_env, service)}"
        url = f"{switch.url.rstrip('/')}/{switch.name}"
        async with http_client(timeout=10) as client:
            try:
                if method == "GET":
                    response = await client.get(url, headers=headers)
                elif value is None:
                    response = await client.delete(url, headers=headers)
                else:
                    response = await client.put(url, headers=headers, json={"value": value})
            except httpx.HTTPError as exc:
                raise RuntimeError(f"flag endpoint {url} unreachable: {type(exc).__name__}") from None
        if method == "GET" and response.status_code == 404:
            return None
        if response.status_code in (401, 403):
            raise fail(f"flag endpoint {url} refused {method} ({response.status_code}): check {switch.token_env}",
                       kind="FlagStoreRefused")
        if method == "DELETE" and response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json().get("value") if method == "GET" else None

    async def _postgres(self, service: str, switch: KillSwitch, value: str | None, read: bool) -> str | None:
        try:
            conn = await psycopg.AsyncConnection.connect(self._dsn(service, switch), autocommit=True,
                                                         connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise RuntimeError(f"flag table of {service!r} unreachable: {type(exc).__name__}") from None
        async with conn:
            await conn.execute(_postgres_ddl(switch))
            if read:
                row = await (await conn.execute(sql.SQL("SELECT value FROM {} WHERE name = %s").format(_table(switch)),
                                                (switch.name,))).fetchone()
                return row[0] if row else None
            if value is None:
                await conn.execute(sql.SQL("DELETE FROM {} WHERE name = %s").format(_table(switch)), (switch.name,))
            else:
                await conn.execute(sql.SQL(
                    "INSERT INTO {} (name, value, updated_by) VALUES (%s, %s, 'rollback') ON CONFLICT (name) "
                    "DO UPDATE SET value = excluded.value, updated_at = now(), updated_by = excluded.updated_by"
                ).format(_table(switch)), (switch.name, value))
            return None

    @activity.defn(name="flags.read")
    async def read(self, request: ServiceRef) -> dict[str, str | None]:
        """Every configured kill switch's current value (None: not set)."""
        values = {}
        for switch in self._switches(request.service):
            if switch.store == "postgres":
                values[switch.name] = await self._postgres(request.service, switch, None, read=True)
            else:
                values[switch.name] = await self._http(request.service, switch, "GET")
        return values

    @activity.defn(name="flags.set")
    async def set(self, request: FlagsRequest) -> None:
        """Set each named switch (None removes it). Setting a value twice is harmless, so retries are."""
        for switch in self._switches(request.service, request.values):
            value = request.values[switch.name]
            if switch.store == "postgres":
                await self._postgres(request.service, switch, value, read=False)
            else:
                await self._http(request.service, switch, "PUT", value)
