"""Metrics and tracing of the real processes: `rollback worker --metrics-port` serves the Temporal
SDK's Prometheus metrics (scraped by us and by a real Prometheus), and with an OTLP endpoint set
the CLI and the worker send spans for the start, the workflow and its activities to a collector.

The collector is a stand-in on 127.0.0.1 that speaks OTLP/HTTP: it decodes each export with the
protobuf messages of the OpenTelemetry protocol itself (opentelemetry-proto)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from starter import engines
from tests.conftest import unavailable
from tests.contract.server import serve
from tests.contract.vercel import realistic
from tests.helpers import assert_eventually
from tests.integration.test_vercel_rollback import vercel_service
from workflows import AppRollbackWorkflow
from workflows.models import AppRollbackInput, AppRollbackResult

ROLLBACK = str(Path(sys.executable).parent / "rollback")


def start_worker(config_path: str, address: str, task_queue: str, log: Path, *args: str,
                 **env: str) -> subprocess.Popen:
    env = {**os.environ, "TEMPORAL_ADDRESS": address, "TEMPORAL_TASK_QUEUE": task_queue, **env}
    return subprocess.Popen([ROLLBACK, "worker", "--config", config_path, *args], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def samples(text: str, name: str) -> list:
    """Every sample of the metric family `name` (histograms: _bucket, _count and _sum too)."""
    return [s for family in text_string_to_metric_families(text) if family.name == name for s in family.samples]


async def test_worker_serves_the_sdks_metrics_and_prometheus_scrapes_them(
        client, task_queue, temporal_address, vercel, write_config, tmp_path):
    realistic(vercel)
    config = write_config({"shop": vercel_service(vercel)})
    port = engines.free_port()
    log = tmp_path / "worker.log"
    worker = start_worker(str(config._path), temporal_address, task_queue, log, "--metrics-port", str(port),
                          TEST_VERCEL_TOKEN=vercel.token)
    prometheus = None
    try:
        await assert_eventually(lambda: asyncio.to_thread(lambda: "worker started" in log.read_text()), 30,
                                message="worker started")
        result = await client.execute_workflow(
            AppRollbackWorkflow.run, AppRollbackInput(service="shop", dry_run=True), id=f"wf-{uuid.uuid4()}",
            task_queue=task_queue, result_type=AppRollbackResult)
        assert result.outcome == "dry_run"

        scraped: dict[str, str] = {}

        async def counted() -> bool:
            async with httpx.AsyncClient() as http:
                scraped["text"] = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            return any(s.value >= 1 for s in samples(scraped["text"], "temporal_workflow_completed"))

        await assert_eventually(counted, 20, message="temporal_workflow_completed on the worker's /metrics")
        text = scraped["text"]
        completed = [s for s in samples(text, "temporal_workflow_completed")
                     if s.labels.get("workflow_type") == "AppRollbackWorkflow"]
        assert [(s.labels["task_queue"], s.value) for s in completed] == [(task_queue, 1.0)]
        latency = {s.labels["activity_type"]: s.value for s in samples(text, "temporal_activity_execution_latency")
                   if s.name.endswith("_count")}
        assert latency.get("audit.append", 0) >= 1, sorted(latency)
        # the dry run read what Vercel serves: a read before any change, so a local activity
        local = {s.labels["activity_type"]: s.value for s in samples(text, "temporal_local_activity_execution_latency")
                 if s.name.endswith("_count")}
        assert local.get("vercel.current", 0) >= 1, sorted(local)
        assert any(s.value > 0 for s in samples(text, "temporal_workflow_task_execution_latency")
                   if s.name.endswith("_sum"))

        # A real Prometheus scrapes the same endpoint (as in a cluster, by the port the worker names).
        binary = shutil.which("prometheus")
        if not binary:
            unavailable("prometheus is not installed: apt-get install prometheus")
        root, prometheus_port = tmp_path / "prometheus", engines.free_port()
        root.mkdir()
        (root / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s"},
            "scrape_configs": [{"job_name": "rollback-worker",
                                "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}]}))
        prometheus = subprocess.Popen(
            [binary, f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prometheus_port}"],
            stdout=(root / "log").open("ab"), stderr=subprocess.STDOUT)
        query = f'temporal_workflow_completed{{job="rollback-worker",workflow_type="AppRollbackWorkflow"}}'
        answer: dict = {}

        async def stored() -> bool:
            try:
                async with httpx.AsyncClient() as http:
                    response = await http.get(f"http://127.0.0.1:{prometheus_port}/api/v1/query",
                                              params={"query": query})
            except httpx.HTTPError:
                return False
            if response.status_code != 200:  # 503 while Prometheus is still starting
                return False
            answer["data"] = response.json()["data"]["result"]
            return bool(answer["data"])

        await assert_eventually(stored, 30, message="Prometheus has the worker's temporal_workflow_completed")
        assert [(r["metric"]["task_queue"], r["value"][1]) for r in answer["data"]] == [(task_queue, "1")]
    finally:
        if prometheus is not None:
            stop(prometheus)
        stop(worker)


async def test_metrics_port_in_use_is_one_clear_error(tmp_path, write_config, vercel):
    config = write_config({"shop": vercel_service(vercel)})
    with __import__("socket").socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await asyncio.to_thread(
            subprocess.run, [ROLLBACK, "worker", "--config", str(config._path), "--metrics-port", str(port)],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "TEST_VERCEL_TOKEN": "t", "TEMPORAL_ADDRESS": "127.0.0.1:1"})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot serve metrics on 127.0.0.1:{port}"), proc.stderr


class Collector:
    """An OTLP/HTTP trace receiver: what the OpenTelemetry Collector's `otlp` receiver accepts on
    port 4318 (`POST /v1/traces`, protobuf ExportTraceServiceRequest)."""

    def __init__(self) -> None:
        self.spans: list[dict] = []

    def app(self) -> Starlette:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (ExportTraceServiceRequest,
                                                                               ExportTraceServiceResponse)

        async def traces(request: Request) -> Response:
            if request.headers.get("content-type") != "application/x-protobuf":
                return Response(status_code=415)
            export = ExportTraceServiceRequest.FromString(await request.body())
            for resource_spans in export.resource_spans:
                service = next(a.value.string_value for a in resource_spans.resource.attributes
                               if a.key == "service.name")
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        self.spans.append({
                            "service": service, "name": span.name, "trace": span.trace_id.hex(),
                            "attributes": {a.key: a.value.string_value for a in span.attributes}})
            return Response(ExportTraceServiceResponse().SerializeToString(), media_type="application/x-protobuf")

        return Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])


async def test_cli_and_worker_send_spans_for_start_workflow_and_activities(
        temporal_address, task_queue, vercel, write_config, tmp_path):
    collector = Collector()
    server = serve(collector.app())
    realistic(vercel)
    config = write_config({"shop": vercel_service(vercel)})
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": server.url, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    log = tmp_path / "worker.log"
    worker = start_worker(str(config._path), temporal_address, task_queue, log, TEST_VERCEL_TOKEN=vercel.token,
                          **otel)
    try:
        await assert_eventually(lambda: asyncio.to_thread(lambda: "worker started" in log.read_text()), 30,
                                message="worker started")
        cli = await asyncio.to_thread(
            subprocess.run, [ROLLBACK, "app", "shop", "--dry-run", "--wait"], capture_output=True, text=True, timeout=120,
            env={**os.environ, "TEMPORAL_ADDRESS": temporal_address, "TEMPORAL_TASK_QUEUE": task_queue,
                 "ROLLBACK_CONFIG": str(config._path), **otel})
        assert cli.returncode == 0, cli.stderr
        workflow_id = "app-rollback-shop"

        def named(name: str, service: str) -> list[dict]:
            return [s for s in collector.spans if s["name"] == name and s["service"] == service
                    and s["attributes"].get("temporalWorkflowID") == workflow_id]

        async def arrived() -> bool:
            return bool(named("RunActivity:vercel.current", "rollback-worker"))

        await assert_eventually(arrived, 20, message="the worker's RunActivity span at the collector")
        start = named("StartWorkflow:AppRollbackWorkflow", "rollback-cli")
        assert len(start) == 1, collector.spans  # sent by the CLI before it exited
        trace = start[0]["trace"]
        run = named("RunWorkflow:AppRollbackWorkflow", "rollback-worker")
        activities = named("RunActivity:vercel.current", "rollback-worker")
        assert run and {s["trace"] for s in run} == {trace}  # one trace from the CLI's start to the worker
        assert {s["trace"] for s in activities} == {trace}
        assert {s["name"] for s in collector.spans if s["name"].startswith("StartActivity:")} >= {
            "StartActivity:vercel.current"}
    finally:
        stop(worker)
        server.stop()
