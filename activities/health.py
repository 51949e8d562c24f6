"""Health, error-rate and version checks over HTTP (runbook 000's `curl … | jq` assessment)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from temporalio import activity

from activities.common import ConfigSource, http_client
from workflows.config import HealthCheck
from workflows.models import HealthSnapshot, ServiceRef, VerifyRequest, VerifyResult


def json_path(document: Any, path: str | None) -> Any:
    """Follow a dotted path (``checks.database.status``, list indexes allowed) into JSON."""
    if not path:
        return None
    node = document
    for part in path.split("."):
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def judge(check: HealthCheck, http_status: int, body: str, version: str | None) -> HealthSnapshot:
    """Turn one health response into a verdict, with the reason when it is not healthy."""
    snapshot = HealthSnapshot(reachable=True, http_status=http_status, version=version)
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if isinstance(document, (dict, list)):
        status = json_path(document, check.status_path)
        rate = json_path(document, check.error_rate_path)
        database = json_path(document, check.database_path)
        snapshot.status = None if status is None else str(status)
        snapshot.database = None if database is None else str(database)
        if isinstance(rate, (int, float)) and not isinstance(rate, bool):
            snapshot.error_rate = float(rate)
    problems = []
    if not 200 <= http_status < 300:
        problems.append(f"health endpoint answered HTTP {http_status}")
    if snapshot.status is not None and snapshot.status.lower() not in check.healthy_values:
        problems.append(f"status is {snapshot.status!r}")
    if snapshot.error_rate is not None and snapshot.error_rate > check.rollback_error_rate:
        problems.append(
            f"error rate {snapshot.error_rate:.1%} is above the rollback threshold "
            f"{check.rollback_error_rate:.1%}"
        )
    snapshot.healthy = not problems
    snapshot.problem = "; ".join(problems)
    return snapshot


async def probe(client: httpx.AsyncClient, check: HealthCheck) -> HealthSnapshot:
    version = None
    try:
        if check.version_url:
            answer = await client.get(check.version_url)
            if answer.status_code == 200:
                version = answer.text.strip()
        response = await client.get(check.url)
    except httpx.HTTPError as exc:
        return HealthSnapshot(
            reachable=False, version=version, problem=f"{check.url} unreachable: {type(exc).__name__}"
        )
    return judge(check, response.status_code, response.text, version)


class HealthActivities:
    def __init__(self, config: ConfigSource):
        self._config = config

    @activity.defn(name="health.assess")
    async def assess(self, request: ServiceRef) -> HealthSnapshot:
        check = self._config.service(request.service).health
        async with http_client(timeout=check.timeout_seconds) as client:
            return await probe(client, check)

    @activity.defn(name="health.verify")
    async def verify(self, request: VerifyRequest) -> VerifyResult:
        """Pass only after N consecutive healthy checks with the expected version and smoke URLs.

        Gives up after 3N probes, so a flapping service fails verification instead of hanging.
        """
        check = self._config.service(request.service).health
        checks: list[HealthSnapshot] = []
        streak = 0
        async with http_client(timeout=check.timeout_seconds) as client:
            for attempt in range(check.consecutive_checks * 3):
                snapshot = await probe(client, check)
                if snapshot.healthy and request.expected_version and check.version_url:
                    if snapshot.version != request.expected_version:
                        snapshot.healthy = False
                        snapshot.problem = (
                            f"version endpoint says {snapshot.version!r}, expected {request.expected_version!r}"
                        )
                if snapshot.healthy:
                    for url in check.smoke_urls:
                        try:
                            code = (await client.get(url)).status_code
                        except httpx.HTTPError as exc:
                            code, detail = None, type(exc).__name__
                        if code is None or not 200 <= code < 300:
                            snapshot.healthy = False
                            snapshot.problem = f"smoke URL {url} answered {code or detail}"
                            break
                checks.append(snapshot)
                streak = streak + 1 if snapshot.healthy else 0
                activity.heartbeat({"attempt": attempt + 1, "streak": streak})
                if streak >= check.consecutive_checks:
                    return VerifyResult(passed=True, checks=checks[-check.consecutive_checks :])
                await asyncio.sleep(check.interval_seconds)
        last = checks[-1]
        return VerifyResult(passed=False, checks=checks[-5:], problem=last.problem or "not healthy")
