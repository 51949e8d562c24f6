"""The alert webhook receiver (Starlette): authenticated endpoints that start rollbacks safely.

One pipeline for every source: size limit while reading, content type, authentication over
the raw bytes, parsing, replay check, then per alert: map to a service, decide with the policy,
and start (or attach to) the service's incident workflow *before* answering, so an accepted
alert is never lost if the process dies right after.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from datetime import datetime, timedelta, timezone

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.client import Client
from temporalio.service import RPCError

from activities.common import ConfigSource
from starter.alerts import Refused, authenticate, parse
from starter.flags import flag_routes
from starter.start import app_rollback_id, start_or_attach_app_rollback
from workflows.config import RollbackConfig, WebhookSource
from workflows.models import Alert, AlertNotice, AppRollbackInput
from workflows.policy import decide

log = logging.getLogger("rollback.webhook")
TOKENS_ENV = "ROLLBACK_WEBHOOK_TOKENS"  # the generic endpoint's bearer tokens unless the config says otherwise
SOURCES = ("alertmanager", "grafana", "sentry", "datadog", "pagerduty", "generic")
REPLAY_MEMORY = 10_000


class BodyTooLarge(Exception):
    pass


async def read_limited(request: Request, limit: int) -> bytes:
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


class SeenDeliveries:
    """Delivery keys answered before (bounded, oldest forgotten first)."""

    def __init__(self, size: int = REPLAY_MEMORY):
        self._keys: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def check_and_add(self, key: str) -> bool:
        if key in self._keys:
            return True
        self._keys[key] = None
        if len(self._keys) > self._size:
            self._keys.popitem(last=False)
        return False

    def forget(self, key: str) -> None:
        """A delivery we failed to act on: its retry must not be taken for a replay."""
        self._keys.pop(key, None)


def source_config(config: RollbackConfig, source: str) -> WebhookSource | None:
    configured = config.webhooks.sources.get(source)
    if configured is None and source == "generic":
        return WebhookSource(bearer_env=TOKENS_ENV)
    return configured


async def recent_automatic_rollbacks(client: Client, service: str, since: datetime) -> int:
    query = (f"RollbackService = '{service}' AND RollbackTrigger = 'automatic' "
             f"AND StartTime > '{since.strftime('%Y-%m-%dT%H:%M:%SZ')}'")
    return (await client.count_workflows(query)).count


def create_app(client: Client, config: ConfigSource, task_queue: str) -> Starlette:
    registry = CollectorRegistry()
    received = Counter("rollback_webhook_received", "Alert deliveries received", ["source"], registry=registry)
    rejected = Counter("rollback_webhook_rejected", "Deliveries refused", ["source", "reason"], registry=registry)
    started = Counter("rollback_webhook_started", "Rollbacks started or alerts attached", ["source"],
                      registry=registry)
    deduplicated = Counter("rollback_webhook_deduplicated", "Deliveries seen before", ["source"], registry=registry)
    seen = SeenDeliveries()

    async def act(settings: RollbackConfig, alert: Alert) -> dict:
        service_name = alert.service or settings.service_for(alert.labels)
        if service_name is None or service_name not in settings.services:
            return {"fingerprint": alert.fingerprint, "started": False,
                    "reason": f"no configured service matches this alert (service={alert.service or alert.labels})"}
        service = settings.services[service_name]
        decision = decide(alert, service.health)
        notice = AlertNotice(source=alert.source, status=alert.status, summary=alert.summary,
                             fingerprint=alert.fingerprint)
        outcome = {"fingerprint": alert.fingerprint, "service": service_name, "decision": decision.action,
                   "rule": decision.rule, "started": False}
        log.info("decision source=%s service=%s action=%s rule=%r", alert.source, service_name, decision.action,
                 decision.rule)
        # Every alert goes on the running incident's timeline, if there is one: one RPC, and
        # for a rollback decision nothing more to do (storms attach here, cheaply).
        try:
            await client.get_workflow_handle(app_rollback_id(service_name)).signal("alert", notice)
            outcome["attached"] = True
        except RPCError:
            outcome["attached"] = False
        if decision.action != "rollback" or outcome["attached"]:
            if outcome["attached"] and decision.action == "rollback":
                outcome.update(started=True, workflow_id=app_rollback_id(service_name))
            return outcome
        policy = service.policy
        now = datetime.now(timezone.utc)
        in_cooldown = await recent_automatic_rollbacks(client, service_name, now - policy.cooldown)
        in_hour = await recent_automatic_rollbacks(client, service_name, now - timedelta(hours=1))
        request = AppRollbackInput(
            service=service_name, reason=f"{alert.source} alert: {alert.summary}", requested_by=f"webhook:{alert.source}",
            automatic=True, severity=decision.severity, trigger_rule=decision.rule,
            dry_run=settings.webhooks.notify_only or not policy.auto_rollback,
            require_approval=in_cooldown > 0 or in_hour >= policy.max_auto_rollbacks_per_hour,
            watch=policy.watch_after_rollback,
        )
        handle = await start_or_attach_app_rollback(client, task_queue, request, notice)
        started.labels(alert.source).inc()
        outcome.update(started=True, workflow_id=handle.id, dry_run=request.dry_run,
                       needs_approval=request.require_approval)
        return outcome

    def make_endpoint(source: str):
        async def endpoint(request: Request) -> Response:
            received.labels(source).inc()
            try:
                try:
                    settings = config.config
                except Exception as exc:  # noqa: BLE001 - the config file broke after start
                    raise Refused(503, "config", f"receiver config is invalid: {exc}") from None
                try:
                    raw = await read_limited(request, settings.webhooks.max_body_bytes)
                except BodyTooLarge:
                    raise Refused(413, "too_large", f"body larger than {settings.webhooks.max_body_bytes} bytes")
                if not request.headers.get("content-type", "").startswith("application/json"):
                    raise Refused(415, "content_type", "send application/json")
                headers = {k.lower(): v for k, v in request.headers.items()}
                authenticate(source, source_config(settings, source), headers, raw)
                alerts, delivery = parse(source, raw, headers)
            except Refused as refusal:
                rejected.labels(source, refusal.reason).inc()
                return JSONResponse({"accepted": False, "reason": str(refusal)}, status_code=refusal.status)
            key = f"{source}:{delivery}" if delivery else ""
            if key and seen.check_and_add(key):
                deduplicated.labels(source).inc()
                return JSONResponse({"accepted": True, "duplicate": True, "started": False})
            try:
                results = [await act(settings, alert) for alert in alerts]
            except RPCError as exc:
                # not acknowledged, so the sender retries; its retry is not a replay
                if key:
                    seen.forget(key)
                rejected.labels(source, "temporal_unavailable").inc()
                log.error("could not start or signal a workflow: %s", exc)
                return JSONResponse({"accepted": False, "reason": "Temporal unavailable; retry"}, status_code=503)
            return JSONResponse({"accepted": True, "alerts": results}, status_code=202)

        return endpoint

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    routes = [Route(f"/alerts/{source}", make_endpoint(source), methods=["POST"]) for source in SOURCES]
    return Starlette(routes=[*routes, *flag_routes(config), Route("/healthz", healthz), Route("/metrics", metrics)])

