"""Runbook 001 step 2, "status only": how the service is doing right now. Reads, never writes.

The health endpoint (timed, as the response-time baseline), the critical endpoints from the
config, recent error lines from the app's logs, and the database: reachable, active sessions,
the critical tables' row counts. Deployments and migration status come from the provider and
migration activities the workflow calls beside this one.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime, timezone

import httpx
import psycopg
from psycopg import sql
from temporalio import activity

from activities.common import ConfigSource, http_client, redact_text
from activities.health import probe
from activities.postgres import service_dsn
from workflows.models import AssessReport, EndpointCheck, ServiceRef
from workflows.policy import qualified

ERROR_LINE = re.compile(r"error|exception|fatal|panic|traceback|\" 5\d\d ", re.I)


class AssessActivities:
    def __init__(self, config: ConfigSource):
        self._config = config

    @activity.defn(name="incident.assess")
    async def assess(self, request: ServiceRef) -> AssessReport:
        service = self._config.service(request.service)
        async with http_client(timeout=service.health.timeout_seconds) as client:
            started = time.monotonic()
            health = await probe(client, service.health)
            elapsed = (time.monotonic() - started) * 1000
            endpoints = [await self._endpoint(client, url) for url in service.incident.critical_endpoints]
        report = AssessReport(service=request.service, at=datetime.now(timezone.utc), health=health,
                              response_ms=round(elapsed, 1) if health.reachable else None, endpoints=endpoints)
        report.error_lines = await asyncio.to_thread(self._error_lines, request.service)
        if service.database is not None:
            await self._database(request.service, report)
        return report

    @staticmethod
    async def _endpoint(client: httpx.AsyncClient, url: str) -> EndpointCheck:
        started = time.monotonic()
        try:
            response = await client.get(url)
        except httpx.HTTPError as exc:
            return EndpointCheck(url=url, problem=f"unreachable: {type(exc).__name__}")
        ok = 200 <= response.status_code < 300
        return EndpointCheck(url=url, http_status=response.status_code, ok=ok,
                             milliseconds=round((time.monotonic() - started) * 1000, 1),
                             problem="" if ok else f"HTTP {response.status_code}")

    def _error_lines(self, service: str) -> list[str]:
        """The last error-looking lines of a Docker container's log (other providers: none here)."""
        target = self._config.service(service).app.docker
        if target is None:
            return []
        from activities.docker import connect

        try:
            logs = connect(target).containers.get(target.container).logs(tail=500).decode(errors="replace")
        except Exception as exc:  # noqa: BLE001 - an assessment reports what it could not read
            return [f"(logs unavailable: {type(exc).__name__})"]
        secrets = self._config.secrets()
        return [redact_text(line, secrets) for line in logs.splitlines() if ERROR_LINE.search(line)][-20:]

    async def _database(self, service: str, report: AssessReport) -> None:
        dsn, database = service_dsn(self._config, service)
        critical = self._config.service(service).database.critical_tables
        try:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                report.database_reachable = True
                row = await (await conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND state = 'active' "
                    "AND pid <> pg_backend_pid()", (database,))).fetchone()
                report.active_sessions = row[0]
                for table in critical:
                    schema, name = qualified(table).split(".")
                    query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(name))
                    try:
                        report.table_counts[qualified(table)] = (await (await conn.execute(query)).fetchone())[0]
                    except psycopg.Error as exc:
                        report.database_error = f"{table}: {str(exc).strip()}"
        except psycopg.OperationalError as exc:
            report.database_reachable = False
            report.database_error = f"unreachable: {type(exc).__name__}"
