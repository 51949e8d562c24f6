"""Metrics and tracing for the worker, the receiver and the CLI: the Temporal SDK's own Prometheus
metrics and OpenTelemetry spans, both off unless asked for.

- Metrics: `serve_sdk_metrics(host, port)` before the first client connects. The SDK's core
  (Rust) exports its worker, workflow and activity metrics on that address itself; the Python
  process serves nothing for it. Clients and workers use the process's default runtime, so
  replacing the default is what puts every client of this process on it.
- Tracing: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set,
  `traced(client, role)` returns the client with the SDK's `TracingInterceptor`; a worker built on
  that client traces workflows and activities too. Spans go out over OTLP/HTTP (protobuf), the
  exporter reading the standard `OTEL_EXPORTER_OTLP_*` variables.
"""

from __future__ import annotations

import os

from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

OTLP_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")

_tracer_provider = None  # set once tracing is on, so the process can flush it before it exits


class TelemetryError(Exception):
    pass


def serve_sdk_metrics(host: str, port: int) -> None:
    """Serve the SDK's Prometheus metrics on host:port for every client and worker of this process."""
    try:
        runtime = Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=f"{host}:{port}")))
    except Exception as exc:  # noqa: BLE001 - the core says why (address in use, bad address) in its message
        raise TelemetryError(f"cannot serve metrics on {host}:{port}: {str(exc).splitlines()[0][:200]}") from None
    # Once a client exists the default runtime is fixed; this must come first, and only once.
    Runtime.set_default(runtime, error_if_already_set=True)


def tracing_configured() -> bool:
    return any(os.environ.get(name) for name in OTLP_ENDPOINT_VARIABLES)


def traced(client: Client, role: str) -> Client:
    """The client with OpenTelemetry tracing when an OTLP endpoint is configured, else as it is.
    `role` names the process in the spans' `service.name` unless OTEL_SERVICE_NAME does."""
    if not tracing_configured():
        return client
    from temporalio.contrib.opentelemetry import TracingInterceptor

    _start_tracer_provider(role)
    config = client.config()
    config["interceptors"] = [*config["interceptors"], TracingInterceptor()]
    return Client(**config)


def _start_tracer_provider(role: str) -> None:
    global _tracer_provider
    if _tracer_provider is not None:
        return
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol and protocol != "http/protobuf":
        raise TelemetryError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported: spans go out as "
                             "http/protobuf (the collector's port 4318); unset it or set http/protobuf")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    service = os.environ.get("OTEL_SERVICE_NAME") or f"rollback-{role}"
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _tracer_provider = provider


def flush() -> None:
    """Send the spans still buffered; the CLI exits with os._exit, which skips atexit handlers."""
    if _tracer_provider is not None:
        _tracer_provider.shutdown()
