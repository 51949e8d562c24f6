"""The alert receiver as tests run it: a config with one fresh service that alerts labelled
service=shop map to, credentials for every source, and the receiver served over real HTTP by
uvicorn (or in-process through ASGI where HTTP itself is not the point).

Test modules use it with `from tests.receiver import receiver  # noqa: F401` (a fixture)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import pytest
import uvicorn
import yaml

from activities.common import ConfigSource
from starter import engines
from starter.start import app_rollback_id
from starter.webhook import TOKENS_ENV, create_app
from workflows.incident import incident_id
from tests.contract.vercel import realistic
from tests.integration.test_vercel_rollback import vercel_service

SECRETS = {
    "TEST_AM_TOKEN": "am-token", "TEST_GRAFANA_BASIC": "grafana:grafana-pw",
    "TEST_SENTRY_SECRET": "sentry-client-secret", "TEST_DD_SECRET": "dd-shared-secret", "TEST_PD_SECRET": "pd-subscription-secret",
}
SOURCES_CONFIG = {
    "alertmanager": {"bearer_env": "TEST_AM_TOKEN"},
    "grafana": {"basic_env": "TEST_GRAFANA_BASIC"},
    "sentry": {"secret_env": "TEST_SENTRY_SECRET"},
    "datadog": {"secret_env": "TEST_DD_SECRET", "header": "X-Webhook-Secret"},
    "pagerduty": {"secret_env": "TEST_PD_SECRET"},
}


def signed_headers(source: str, raw: bytes, **extra: str) -> dict[str, str]:
    """The headers each sender really sends, with valid credentials."""
    headers = {"Content-Type": "application/json", **extra}
    if source == "alertmanager":
        headers["Authorization"] = f"Bearer {SECRETS['TEST_AM_TOKEN']}"
    elif source == "grafana":
        headers["Authorization"] = "Basic " + base64.b64encode(SECRETS["TEST_GRAFANA_BASIC"].encode()).decode()
    elif source == "sentry":
        headers.setdefault("Request-ID", str(uuid.uuid4()))
        headers.setdefault("Sentry-Hook-Timestamp", str(int(time.time())))
        headers["Sentry-Hook-Signature"] = hmac.new(SECRETS["TEST_SENTRY_SECRET"].encode(), raw,
                                                    hashlib.sha256).hexdigest()
    elif source == "datadog":
        headers["X-Webhook-Secret"] = SECRETS["TEST_DD_SECRET"]
    elif source == "pagerduty":
        digest = hmac.new(SECRETS["TEST_PD_SECRET"].encode(), raw, hashlib.sha256).hexdigest()
        headers["X-PagerDuty-Signature"] = f"v1={digest}"
    elif source == "generic":
        headers["Authorization"] = "Bearer hook-secret-2"
    return headers


@asynccontextmanager
async def serving(app):
    """Serve `app` with uvicorn on a free loopback port (lifespan included); yield its base URL."""
    port = engines.free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    server.install_signal_handlers = lambda: None
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@dataclass
class Receiver:
    client: object
    task_queue: str
    config: ConfigSource
    service: str
    workflow_id: str
    apps: list = field(default_factory=list)

    def app(self):
        """A new receiver over the same config and state: what a restart gives."""
        app = create_app(self.client, self.config, self.task_queue)
        self.apps.append(app)
        return app

    def asgi(self, app=None) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app or self.app()), base_url="http://receiver")

    @asynccontextmanager
    async def http(self, app=None):
        """The receiver served over real HTTP; yields a client with that base URL."""
        async with serving(app or self.app()) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            yield http


@pytest.fixture
def receiver(client, task_queue, vercel, write_config, monkeypatch):
    """`receiver(policy=…, alerts=…, **webhooks)` -> Receiver for a fresh service (workflow IDs
    are per service and the dev server is shared), which alerts labelled service=shop map to."""
    realistic(vercel)
    monkeypatch.setenv("TEST_VERCEL_TOKEN", vercel.token)
    monkeypatch.setenv(TOKENS_ENV, "hook-secret-1,hook-secret-2")  # two during rotation
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    name = f"shop-{uuid.uuid4().hex[:8]}"

    def make(policy: dict | None = None, alerts: dict | None = None, service_alerts: dict | None = None,
             **webhooks) -> Receiver:
        extra = {"policy": policy} if policy else {}
        if service_alerts:
            extra["alerts"] = service_alerts
        path = write_config({name: vercel_service(vercel, alert_match={"service": "shop"}, **extra)})._path
        document = yaml.safe_load(path.read_text())
        document["webhooks"] = {"sources": SOURCES_CONFIG, **webhooks}
        if alerts:
            document["alerts"] = alerts
        path.write_text(yaml.safe_dump(document))
        return Receiver(client, task_queue, ConfigSource(path), name, app_rollback_id(name))

    make.service = name
    make.workflow_id = app_rollback_id(name)
    return make


async def runs_of(client, service: str) -> int:
    """How many runs of the service's rollback workflow Temporal lists (any status)."""
    return (await client.count_workflows(f"WorkflowId = '{app_rollback_id(service)}'")).count


async def started(client, service: str) -> bool:
    """Whether Temporal has any workflow for the service: the receiver's own IDs (rollback,
    incident) by describe, which is strongly consistent, and any other ID by the service's search
    attribute in a visibility count."""
    from temporalio.service import RPCError, RPCStatusCode

    for workflow_id in (app_rollback_id(service), incident_id(service)):
        try:
            await client.get_workflow_handle(workflow_id).describe()
            return True
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
    return (await client.count_workflows(f"RollbackService = '{service}'")).count > 0
