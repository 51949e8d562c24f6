"""`rollback up`: the whole system in one foreground process, plus the demo rollback."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
from pathlib import Path

from activities.common import ConfigSource
from starter import engines
from workflows.config import CONFIG_ENV_VAR, ComposeTarget, DockerTarget, RollbackConfig, config_path

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "demo" / "rollback.yaml"
DEMO_SERVICE = "demo-web"
DEMO_PORT = 18080


DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"  # what the docker SDK uses without DOCKER_HOST


def _docker_answers(target: DockerTarget | ComposeTarget | None = None) -> bool:
    """Whether the engine answers, connected to the way the worker connects (DOCKER_HOST and the
    DOCKER_TLS_* settings too); with no target, the engine DOCKER_HOST or the local socket names."""
    import docker

    from activities.docker import connect

    try:
        engine = connect(target) if target else docker.from_env()
        engine.api.timeout = 3  # a quick answer; an address that swallows packets must not hold `up`
        engine.ping()
        return True
    except Exception:  # noqa: BLE001 - any failure means "no engine there"
        return False


def run_up(*, config: Path | None, data_dir: Path, demo: bool, port: int, ui_port: int, webhook_port: int,
           exit_after_demo: bool, allow_missing_secrets: bool = False) -> int:
    from starter.cli import load_for_worker

    data_dir = data_dir.resolve()
    if config is None and not os.environ.get(CONFIG_ENV_VAR) and not config_path().exists():
        config = DEMO_CONFIG  # nothing configured yet: protect the demo service
    config = config_path(config).resolve()
    os.environ.setdefault("ROLLBACK_STATE_DIR", str(data_dir / "state"))
    os.environ.setdefault("ROLLBACK_ARTIFACT_DIR", str(data_dir / "incidents"))
    # a bad config or an unset secret stops us before anything starts, as it stops `rollback worker`
    loaded = load_for_worker(config, allow_missing_secrets)

    started: list[engines.Service] = []
    try:
        if engines.port_open("127.0.0.1", port):
            print(f"Temporal server:   using the one already listening on 127.0.0.1:{port}", flush=True)
        else:
            print("starting the Temporal dev server ...", flush=True)
            started.append(engines.start_temporal(data_dir / "temporal", port, ui_port))
            print(f"Temporal server:   started on 127.0.0.1:{port}, history in {data_dir / 'temporal'}", flush=True)
        os.environ["TEMPORAL_ADDRESS"] = f"127.0.0.1:{port}"
        if demo and not _docker_answers():
            print("starting a private Docker engine for the demo target ...", flush=True)
            dockerd = engines.start_dockerd(data_dir / "docker")
            started.append(dockerd)
            os.environ["DOCKER_HOST"] = dockerd.address
            print(f"Docker engine:     started a private dockerd at {dockerd.address} for the demo (DOCKER_HOST)",
                  flush=True)
        for line in expected_engines(loaded):
            print(line, flush=True)
        return asyncio.run(_serve(config, loaded, demo, ui_port, webhook_port, exit_after_demo, data_dir))
    finally:
        for service in reversed(started):
            service.stop()


def expected_engines(config: RollbackConfig) -> list[str]:
    """What the configured services need that `up` does not start: Docker engines (by each
    service's docker_host, else DOCKER_HOST, else the local socket) and their databases."""
    by_engine: dict[tuple[str, str], tuple[DockerTarget | ComposeTarget, list[str]]] = {}
    for name, service in sorted(config.services.items()):
        if service.app.provider in ("docker", "compose"):
            target = getattr(service.app, service.app.provider)
            if target.docker_host:
                key = (target.docker_host, "docker_host")
            elif os.environ.get("DOCKER_HOST"):
                key = (os.environ["DOCKER_HOST"], "DOCKER_HOST")
            else:
                key = (DEFAULT_DOCKER_HOST, "the local socket: no docker_host, no DOCKER_HOST")
            by_engine.setdefault(key, (target, []))[1].append(name)
    lines = []
    for (address, source), (target, names) in by_engine.items():
        state = ("answers" if _docker_answers(target) else "DOES NOT ANSWER; rollbacks of these services fail "
                 "until an engine runs there (or set docker_host in the config, or DOCKER_HOST)")
        lines.append(f"Docker engine:     {address} ({source}) for {', '.join(names)}: {state}")
    if not by_engine:
        lines.append("Docker engine:     no docker or compose service configured")
    for name, service in sorted(config.services.items()):
        if service.database:
            lines.append(f"PostgreSQL:        not started here; {name} connects through ${service.database.dsn_env}")
    return lines


def cli_environment(config_file: Path, config: RollbackConfig) -> dict[str, str]:
    """What another shell needs so every `rollback` command reaches this server and reads the
    same config and directories the worker writes (listings included)."""
    environment = {"TEMPORAL_ADDRESS": os.environ["TEMPORAL_ADDRESS"], CONFIG_ENV_VAR: str(config_file),
                   "ROLLBACK_STATE_DIR": config.state_dir, "ROLLBACK_ARTIFACT_DIR": config.artifact_dir}
    for name in ("TEMPORAL_NAMESPACE", "TEMPORAL_TASK_QUEUE"):
        if os.environ.get(name):
            environment[name] = os.environ[name]
    return environment


async def _serve(config: Path, loaded: RollbackConfig, demo: bool, ui_port: int, webhook_port: int,
                 exit_after_demo: bool, data_dir: Path) -> int:
    import uvicorn

    from starter.cli import _client, _follow, _task_queue
    from starter.webhook import create_app
    from worker.main import build_worker

    client = await _client("up")
    source = ConfigSource(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    receiver = uvicorn.Server(uvicorn.Config(create_app(client, source, _task_queue()), host="127.0.0.1",
                                             port=webhook_port, log_level="warning"))
    receiver.install_signal_handlers = lambda: None  # we own Ctrl-C
    receiver_task = asyncio.create_task(receiver.serve())
    code = 0
    async with build_worker(client, source, _task_queue()):
        print(f"Temporal UI:       http://127.0.0.1:{ui_port}", flush=True)
        print(f"webhook receiver:  http://127.0.0.1:{webhook_port}  (/healthz, /metrics, /alerts/<source>)", flush=True)
        print("worker:            running on task queue", _task_queue(), flush=True)
        exports = "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in cli_environment(config, loaded).items())
        env_file = data_dir / "cli.env"
        env_file.write_text(exports + "\n")
        print(f"for the CLI in another shell (or: source {env_file}):\n  {exports}", flush=True)
        if demo:
            code = await _demo(client, _follow, _task_queue(), webhook_port, data_dir, loaded)
            print(f"see it in the UI:  http://127.0.0.1:{ui_port}/namespaces/default/workflows", flush=True)
        if not exit_after_demo:
            print("press Ctrl-C to stop", flush=True)
            await stop.wait()
        print("stopping ...", flush=True)
        receiver.should_exit = True
        await receiver_task
    return code


async def _demo(client, follow, task_queue: str, webhook_port: int, data_dir: Path,
                config: RollbackConfig) -> int:
    """Deploy demo v1, then a bad v2; Prometheus + Alertmanager (when installed) notice and the
    receiver starts the rollback, else the demo starts it directly. Then show it to the end."""
    import secrets
    from datetime import datetime, timezone

    import docker

    from activities.docker import DeployLedger, deploy
    from starter.start import app_rollback_id, start_app_rollback
    from workflows.models import AppRollbackInput

    monitoring: list[engines.Service] = []
    os.environ["ROLLBACK_DEMO_ALERTMANAGER_TOKEN"] = secrets.token_urlsafe(24)
    try:
        monitoring = engines.start_monitoring(
            data_dir / "monitoring", app_port=DEMO_PORT, service=DEMO_SERVICE,
            webhook_url=f"http://127.0.0.1:{webhook_port}/alerts/alertmanager",
            bearer_token=os.environ["ROLLBACK_DEMO_ALERTMANAGER_TOKEN"],
            prometheus_port=engines.free_port(), alertmanager_port=engines.free_port())
        print(f"demo: Prometheus on {monitoring[1].address}, Alertmanager on {monitoring[0].address}", flush=True)
    except engines.EngineError as exc:
        print(f"demo: no monitoring stack ({exc}); the demo starts the rollback itself", flush=True)

    def prepare() -> None:
        engine = docker.from_env(timeout=60)
        for leftover in engine.containers.list(all=True, filters={"name": DEMO_SERVICE}):
            if leftover.name == DEMO_SERVICE or leftover.name.startswith(
                    (f"{DEMO_SERVICE}-before-rollback-", f"{DEMO_SERVICE}-deploy-previous")):
                leftover.remove(force=True)  # a fresh demo each time `up` runs; nothing else is touched
        for version in engines.DEMO_VERSIONS:
            engines.build_demo_image(engine, version)
        ledger = DeployLedger.of(config, DEMO_SERVICE)
        engines.run_demo_container(engine, DEMO_SERVICE, "demo-web:v1", DEMO_PORT)
        ledger.record(engine.images.get("demo-web:v1").id, "demo-web:v1")
        deploy(engine, DEMO_SERVICE, "demo-web:v2", ledger)

    try:
        began = datetime.now(timezone.utc)
        print("demo: deploying demo-web v1, then a bad v2 (27% errors) on 127.0.0.1:18080 ...", flush=True)
        await asyncio.to_thread(prepare)
        workflow_id = app_rollback_id(DEMO_SERVICE)
        alert_started = False
        if monitoring:
            print("demo: waiting for Prometheus to fire and Alertmanager to call the receiver ...", flush=True)
            for _ in range(120):
                try:
                    alert_started = (await client.get_workflow_handle(workflow_id).describe()).start_time >= began
                except Exception:  # noqa: BLE001 - not started yet
                    pass
                if alert_started:
                    break
                await asyncio.sleep(0.5)
            else:
                print("demo: no alert arrived within 60 s; starting the rollback directly", flush=True)
        if not alert_started:
            await start_app_rollback(client, task_queue, AppRollbackInput(
                service=DEMO_SERVICE, reason="demo: v2 error rate 27% is above the 5% threshold",
                requested_by="demo"))
        print(f"demo: following {workflow_id}", flush=True)
        return await follow(client, workflow_id, False)
    finally:
        for service in monitoring:
            service.stop()
