"""The alert webhook receiver (Starlette): authenticated endpoints that start rollbacks safely.

One pipeline for every source: size limit while reading, authentication over the raw bytes,
content type, parsing (hostile input is a 4xx, never a 5xx), replay check against the durable
replay store, then per alert: route to a service, decide (rules, then the matrix), and start (or
attach to) the service's incident workflow *before* answering, so an accepted alert is never
lost if the process dies right after. The only 5xx is a 503 (Temporal, the replay store or the
config unavailable) that asks the sender to retry.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import sqlite3
import time
from contextlib import asynccontextmanager

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.service import RPCError

from activities.common import ConfigSource
from activities.state import StateUnavailable
from starter.alerts import SOURCES, Refused, authenticate, ended_occurrences, parse
from starter.flags import flag_routes
from starter.forwarding import AlertForwarder
from starter.replay import ReplayStores
from starter.slack_actions import slack_routes
from starter.routing import Verdict, route_and_decide
from starter.start import app_rollback_id, incident_id, start_or_attach_app_rollback, start_or_signal_incident
from workflows.config import ConfigError, RollbackConfig, WebhookSource
from workflows.models import AcknowledgeInput, Alert, AlertNotice, AppRollbackInput, IncidentInput

log = logging.getLogger("rollback.webhook")
TOKENS_ENV = "ROLLBACK_WEBHOOK_TOKENS"  # the generic endpoint's bearer tokens unless the config says otherwise
# How long a service's run seen open is trusted without asking Temporal again. Past that, a
# delivery still goes to the run last seen open while a lookup in the background asks again: no
# delivery waits for a lookup once its service has been seen (an alert queued for a run that
# ended meanwhile starts the next one: AlertForwarder._start_successor). A resolved alert forgets
# the run at once (the run it resolves is about to end, and the next firing one must start anew).
OPEN_RUN_TTL_SECONDS = 0.5


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


def source_config(config: RollbackConfig, source: str) -> WebhookSource | None:
    configured = config.webhooks.sources.get(source)
    if configured is None and source == "generic":
        return WebhookSource(bearer_env=TOKENS_ENV)
    return configured


def replay_key(source: str, occurrence: str, status: str) -> str:
    return f"{source}:{occurrence}:{status}"


def create_app(client: Client, config: ConfigSource, task_queue: str) -> Starlette:
    registry = CollectorRegistry()
    received = Counter("rollback_webhook_received", "Alert deliveries received", ["source"], registry=registry)
    rejected = Counter("rollback_webhook_rejected", "Deliveries refused, by reason (5xx included)",
                       ["source", "reason"], registry=registry)
    started = Counter("rollback_webhook_started", "Rollbacks started or alerts attached", ["source"],
                      registry=registry)
    deduplicated = Counter("rollback_webhook_deduplicated", "Deliveries seen before", ["source"], registry=registry)
    stores = ReplayStores()

    async def launch(start: IncidentInput | AppRollbackInput, notice: AlertNotice) -> str:
        """Start (or signal) the run a decision asks for, with the alert; its ID, now known open."""
        if isinstance(start, IncidentInput):
            handle = await start_or_signal_incident(client, task_queue, start, notice)
        else:
            handle = await start_or_attach_app_rollback(client, task_queue, start, notice)
        open_runs[start.service] = (handle.id, time.monotonic())
        return handle.id

    async def restart(fallback: str, notice: AlertNotice) -> str:
        """Start what a queued alert's decision asked for, its run having ended before delivery."""
        spec = json.loads(fallback)
        model = IncidentInput if spec["kind"] == "incident" else AppRollbackInput
        return await launch(model.model_validate(spec["request"]), notice)

    forwarder = AlertForwarder(client, restart)
    Gauge("rollback_webhook_alerts_queued", "Alerts for open runs waiting to be forwarded",
          registry=registry).set_function(forwarder.queued)

    lookups: dict[str, asyncio.Future] = {}  # service -> the lookup in flight
    # service -> (its open run, when seen open), asked again in the background once older than
    # OPEN_RUN_TTL_SECONDS. An alert queued for a run that has ended by the time it is forwarded
    # starts what its decision asked for (AlertForwarder._start_successor), so a stale entry delays
    # a start, never loses it.
    open_runs: dict[str, tuple[str, float]] = {}
    # service -> the start in flight: deliveries for the service that arrive meanwhile attach to the
    # run it starts (queued for the forwarder) instead of each sending a signal-with-start
    starting: dict[str, asyncio.Future] = {}

    async def look_up(service: str) -> str | None:
        candidates = (incident_id(service), app_rollback_id(service))  # an incident takes the alerts first
        found = await asyncio.gather(*(forwarder.is_open(workflow_id) for workflow_id in candidates))
        return next((workflow_id for workflow_id, is_open in zip(candidates, found) if is_open), None)

    def refresh(service: str) -> None:
        """Ask again, in the background, whether the service's run last seen open still is."""
        if service in lookups:
            return
        pending = lookups[service] = asyncio.ensure_future(look_up(service))

        def done(future: asyncio.Future) -> None:
            lookups.pop(service, None)
            if future.cancelled():
                return
            if future.exception() is not None:
                log.warning("lookup of %s's open run failed: %s", service, future.exception())
            elif future.result() is None:
                open_runs.pop(service, None)  # ended: the next delivery looks up (and starts) anew
            else:
                open_runs[service] = (future.result(), time.monotonic())

        pending.add_done_callback(done)

    async def open_run(service: str, known: dict[str, str | None]) -> str | None:
        """The service's open incident or app rollback, if any: both IDs asked at once, the lookup
        shared by the deliveries for the same service that arrive while it is being asked, and a run
        seen open trusted (past OPEN_RUN_TTL_SECONDS, while it is asked again in the background)."""
        cached = open_runs.get(service)
        if service not in known and cached is not None:
            known[service] = cached[0]
            if time.monotonic() - cached[1] >= OPEN_RUN_TTL_SECONDS:
                refresh(service)
        if service not in known:
            pending = lookups.get(service)
            if pending is None:
                pending = lookups[service] = asyncio.ensure_future(look_up(service))
                pending.add_done_callback(lambda _: lookups.pop(service, None))
            known[service] = await asyncio.shield(pending)
            if known[service] is not None:
                open_runs[service] = (known[service], time.monotonic())
        return known[service]

    async def acknowledge(workflow_id: str, alert: Alert) -> bool:
        """The page was acknowledged in PagerDuty: so is the incident (its response-time escalation
        stops). Already acknowledged, or still starting: nothing to do, said in the log."""
        who = f"{alert.acknowledged_by} (via {alert.source})"
        try:
            await client.get_workflow_handle(workflow_id).execute_update(
                "acknowledge", AcknowledgeInput(by=who, note=f"acknowledged in {alert.source}"), result_type=str)
        except WorkflowUpdateFailedError as exc:
            log.info("%s not acknowledged by %s: %s", workflow_id, who, exc.cause or exc)
            return False
        return True

    async def act(settings: RollbackConfig, verdict: Verdict, known: dict[str, str | None]) -> dict:
        alert, decision, service_name = verdict.alert, verdict.decision, verdict.service
        outcome = {**verdict.describe(), "started": False}
        log.info("decision source=%s service=%s action=%s severity=%s rule=%r", alert.source, service_name,
                 decision.action, decision.severity, decision.rule)
        if service_name is None:
            return outcome
        # the running workflow's timeline says what was decided for each firing alert, and by which rule
        summary = alert.summary
        if alert.status == "firing":
            summary = f"{summary} ({decision.action}, rule: {decision.rule})"
        notice = AlertNotice(source=alert.source, status=alert.status, summary=summary, fingerprint=alert.fingerprint)
        # What the decision starts, if anything (also the fallback of an alert queued for a run
        # that ends before the alert reaches it)
        policy = settings.services[service_name].policy
        dry_run = settings.webhooks.notify_only or not policy.auto_rollback
        start = None
        if decision.action == "incident":  # runbook 001 end to end: classify, page, stabilise, plan, ...
            start = IncidentInput(
                service=service_name, severity=decision.severity, reason=f"{alert.source} alert: {alert.summary}",
                trigger=alert.labels.get("category") or alert.labels.get("issue_type") or "",
                error_rate=alert.values.get("error_rate"), requested_by=f"webhook:{alert.source}", automatic=True,
                trigger_rule=decision.rule, dry_run=dry_run)
        elif decision.action == "rollback":
            # the cooldown and the hourly cap are checked by the rollback itself (not on this request's path)
            start = AppRollbackInput(
                service=service_name, requested_by=f"webhook:{alert.source}", automatic=True,
                reason=f"{alert.source} alert: {alert.summary}", severity=decision.severity,
                trigger_rule=decision.rule, dry_run=dry_run, watch=policy.watch_after_rollback)
        # Every alert goes on the running incident's (or rollback's) timeline, if there is one:
        # queued durably and forwarded in batches (a storm is a few signals, not one per alert);
        # for a rollback decision nothing more to do.
        if alert.status == "resolved":
            open_runs.pop(service_name, None)
        workflow_id = await open_run(service_name, known)
        if workflow_id is None and start is not None and service_name in starting:
            # another delivery is starting the service's run right now: this alert joins it
            workflow_id = known[service_name] = await asyncio.shield(starting[service_name])
        if alert.status == "resolved":
            open_runs.pop(service_name, None)  # the run it resolves is about to end: ask again next time
        outcome["attached"] = workflow_id is not None
        if workflow_id is not None:
            fallback = None if start is None else json.dumps(
                {"kind": decision.action, "request": start.model_dump(mode="json")})
            forwarder.queue(settings.state_dir, workflow_id, notice, fallback)
        if decision.action == "acknowledge" and workflow_id == incident_id(service_name):
            outcome["acknowledged"] = await acknowledge(workflow_id, alert)
        if start is None or outcome["attached"]:
            if outcome["attached"] and start is not None:
                outcome.update(started=True, workflow_id=workflow_id)
            return outcome
        launched = starting[service_name] = asyncio.get_running_loop().create_future()
        try:
            started_id = await launch(start, notice)
        except Exception as exc:
            launched.set_exception(exc)
            launched.exception()  # retrieved: a start nobody else waited for is not an unhandled error
            raise
        except BaseException:
            launched.cancel()
            raise
        finally:
            starting.pop(service_name, None)
        launched.set_result(started_id)
        known[service_name] = started_id  # the delivery's other alerts for the service attach to it
        started.labels(alert.source).inc()
        outcome.update(started=True, workflow_id=started_id, dry_run=start.dry_run)
        return outcome

    async def receive(source: str, request: Request) -> Response:
        try:
            settings = config.config
        except Exception as exc:  # noqa: BLE001 - the config file broke after start
            raise Refused(503, "config", f"receiver config is invalid: {exc}") from None
        try:
            raw = await read_limited(request, settings.webhooks.max_body_bytes)
        except BodyTooLarge:
            raise Refused(413, "too_large", f"body larger than {settings.webhooks.max_body_bytes} bytes") from None
        except ClientDisconnect:
            log.warning("client disconnected before sending the whole body source=%s", source)
            raise Refused(400, "client_disconnect", "the client disconnected mid-body") from None
        headers = {k.lower(): v for k, v in request.headers.items()}
        authenticate(source, source_config(settings, source), headers, raw)  # before anything else is read
        if not headers.get("content-type", "").startswith("application/json"):
            raise Refused(415, "content_type", "send application/json")
        verdicts = [route_and_decide(settings, alert) for alert in parse(source, raw, headers, settings.alerts)]

        keys = [replay_key(source, v.alert.occurrence, v.alert.status) if v.alert.occurrence else None
                for v in verdicts]
        try:
            store = stores.get(settings)
            claims = iter(await asyncio.to_thread(
                store.claim, [key for key in keys if key], settings.webhooks.replay_ttl.total_seconds()))
        except (sqlite3.Error, psycopg.Error, StateUnavailable, ConfigError, OSError) as exc:
            log.error("replay store unavailable: %s", exc)
            raise Refused(503, "replay_store", "replay store unavailable; retry") from None
        new = [next(claims) if key else True for key in keys]
        if verdicts and not any(new):
            deduplicated.labels(source).inc()
            return JSONResponse({"accepted": True, "duplicate": True, "started": False})
        fresh = [v for v, is_new in zip(verdicts, new) if is_new]
        claimed = [key for key, is_new in zip(keys, new) if key and is_new]
        try:
            known: dict[str, str | None] = {}
            results = [await act(settings, v, known) for v in fresh]
        except RPCError as exc:
            store.forget(claimed)  # not acknowledged, so the sender retries; its retry is not a replay
            log.error("could not start or signal a workflow: %s", exc)
            raise Refused(503, "temporal_unavailable", "Temporal unavailable; retry") from None
        # The same alert may fire again after it resolved, even with the same startsAt: new then.
        store.forget([replay_key(source, occurrence, "firing") for v in fresh
                      if v.alert.occurrence and v.alert.status == "resolved" for occurrence in ended_occurrences(v.alert)])
        return JSONResponse({"accepted": True, "alerts": results, "replayed": new.count(False)}, status_code=202)

    def make_endpoint(source: str):
        async def endpoint(request: Request) -> Response:
            received.labels(source).inc()
            try:
                return await receive(source, request)
            except Refused as refusal:
                rejected.labels(source, refusal.reason).inc()
                return JSONResponse({"accepted": False, "reason": str(refusal)}, status_code=refusal.status)
            except Exception:  # noqa: BLE001 - a bug: counted and logged, never a traceback to the sender
                rejected.labels(source, "internal").inc()
                log.exception("internal error handling a %s delivery", source)
                return JSONResponse({"accepted": False, "reason": "internal error"}, status_code=500)

        return endpoint

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(_: Starlette):
        gc.freeze()  # what start-up built lives as long as the process: no ~100 ms full collections
        try:
            forwarder.outbox(config.config.state_dir)  # what an earlier receiver left queued
            forwarder.start()
        except Exception as exc:  # noqa: BLE001 - a broken config answers 503 per request instead
            log.error("alert outbox not opened at start: %s", exc)
        yield
        await forwarder.stop()
        stores.close()

    routes = [Route(f"/alerts/{source}", make_endpoint(source), methods=["POST"]) for source in SOURCES]
    return Starlette(routes=[*routes, *flag_routes(config), *slack_routes(client, config), Route("/healthz", healthz),
                             Route("/metrics", metrics)],
                     lifespan=lifespan)
