"""The alert webhook receiver (Starlette): authenticated endpoints that start rollbacks.

This first version serves a generic JSON endpoint with bearer authentication, /healthz and
/metrics; source-specific endpoints (Alertmanager, Grafana, Sentry, Datadog, PagerDuty) build
on the same pieces.
"""

from __future__ import annotations

import hmac
import json
import logging
import os

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.client import Client

from activities.common import ConfigSource
from starter.start import start_or_attach_app_rollback
from workflows.config import ConfigError
from workflows.models import AlertNotice, AppRollbackInput

log = logging.getLogger("rollback.webhook")
TOKENS_ENV = "ROLLBACK_WEBHOOK_TOKENS"
MAX_BODY_BYTES = 1 << 20


class GenericAlert(BaseModel):
    service: str
    status: str = "firing"
    summary: str = ""
    severity: str = "P1"
    fingerprint: str = ""


class BodyTooLarge(Exception):
    pass


async def read_limited(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """Read the body, stopping as soon as it passes the limit (never buffering a huge one)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def bearer_ok(header: str | None, tokens: list[str]) -> bool:
    """Constant-time match against any configured token; no tokens configured refuses all."""
    if not header or not header.startswith("Bearer ") or not tokens:
        return False
    offered = header.removeprefix("Bearer ").encode()
    return any(hmac.compare_digest(offered, token.encode()) for token in tokens)


def create_app(client: Client, config: ConfigSource, task_queue: str) -> Starlette:
    registry = CollectorRegistry()
    received = Counter("rollback_webhook_received", "Alert deliveries received", ["source"], registry=registry)
    rejected = Counter("rollback_webhook_rejected", "Deliveries refused", ["source", "reason"], registry=registry)
    started = Counter("rollback_webhook_started", "Rollbacks started or alerts attached", ["source"], registry=registry)

    def refuse(source: str, reason: str, status: int, message: str) -> JSONResponse:
        rejected.labels(source, reason).inc()
        return JSONResponse({"accepted": False, "reason": message}, status_code=status)

    async def generic(request: Request) -> Response:
        received.labels("generic").inc()
        tokens = [t for t in os.environ.get(TOKENS_ENV, "").split(",") if t]
        if not bearer_ok(request.headers.get("authorization"), tokens):
            return refuse("generic", "unauthenticated", 401, "missing or wrong bearer token")
        if not request.headers.get("content-type", "").startswith("application/json"):
            return refuse("generic", "content_type", 415, "send application/json")
        try:
            body = await read_limited(request)
        except BodyTooLarge:
            return refuse("generic", "too_large", 413, f"body larger than {MAX_BODY_BYTES} bytes")
        try:
            alert = GenericAlert.model_validate(json.loads(body))
        except (ValueError, ValidationError) as exc:
            return refuse("generic", "malformed", 400, f"malformed alert: {str(exc).splitlines()[0]}")
        try:
            service = config.config.service(alert.service)
        except ConfigError as exc:
            log.info("alert for unknown service ignored: %s", exc)
            return JSONResponse({"accepted": True, "started": False, "reason": str(exc)}, status_code=202)
        if alert.status != "firing":
            return JSONResponse({"accepted": True, "started": False, "reason": "only firing alerts start rollbacks"})
        notice = AlertNotice(source="generic", status=alert.status, summary=alert.summary, fingerprint=alert.fingerprint)
        request_input = AppRollbackInput(
            service=alert.service, reason=f"alert: {alert.summary}", requested_by="webhook:generic",
            automatic=True, severity=alert.severity, dry_run=not service.policy.auto_rollback,
        )
        handle = await start_or_attach_app_rollback(client, task_queue, request_input, notice)
        started.labels("generic").inc()
        return JSONResponse({"accepted": True, "started": True, "workflow_id": handle.id}, status_code=202)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[
        Route("/alerts/generic", generic, methods=["POST"]),
        Route("/healthz", healthz),
        Route("/metrics", metrics),
    ])
