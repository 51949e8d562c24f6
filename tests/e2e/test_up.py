"""README command 1 for real: `rollback up` starts the dev server, a private dockerd, the worker
and the webhook receiver, runs the demo rollback, and exits on request."""

from __future__ import annotations

import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from starter import engines
from tests.conftest import unavailable
from tests.helpers import create_database

ROLLBACK = str(Path(sys.executable).parent / "rollback")


def up_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "ROLLBACK_"))}
    env.pop("DOCKER_HOST", None)  # let `up` start its own engine, as on a fresh machine
    return env


def test_up_runs_the_demo_rollback_to_the_end(tmp_path):
    if not shutil.which("dockerd"):
        unavailable("dockerd is not installed: apt-get install docker.io")
    if engines.port_open("127.0.0.1", 18080):
        unavailable("port 18080 (the demo app) is in use")
    ports = [str(engines.free_port()) for _ in range(3)]
    proc = subprocess.run(
        [ROLLBACK, "up", "--data-dir", str(tmp_path / "var"), "--port", ports[0], "--ui-port", ports[1],
         "--webhook-port", ports[2], "--exit-after-demo"],
        capture_output=True, text=True, env=up_env(), timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert f"Temporal UI:       http://127.0.0.1:{ports[1]}" in out
    assert "ROLLED_BACK: rolled back to demo-web:v1" in out
    for step in ("assessed", "captured", "planned", "rolled_back", "verified"):
        assert step in out
    assert (tmp_path / "var" / "temporal" / "temporal.db").stat().st_size > 0  # history persists on disk
    postmortems = list((tmp_path / "var" / "incidents" / "demo-web").rglob("postmortem.md"))
    assert len(postmortems) == 1
    assert not engines.port_open("127.0.0.1", int(ports[0]))  # everything was stopped


def test_up_stops_cleanly_on_sigint(tmp_path):
    ports = [engines.free_port() for _ in range(3)]
    config = quick_path_config(tmp_path / "project", tmp_path / "no-docker.sock")  # SHOP_DATABASE_URL unset
    proc = subprocess.Popen(
        [ROLLBACK, "up", "--no-demo", "--allow-missing-secrets", "--data-dir", str(tmp_path / "var"),
         "--port", str(ports[0]), "--ui-port", str(ports[1]), "--webhook-port", str(ports[2])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=up_env(), cwd=config.parent,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{ports[2]}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            raise AssertionError("webhook receiver never answered")
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    assert "stopping" in output and "Traceback" not in output
    assert not engines.port_open("127.0.0.1", ports[0])


def quick_path_config(project: Path, docker_socket: Path) -> Path:
    """The README's "your own services" config: a database service, nothing but defaults for the
    directories (so they would resolve under the project, not under `up --data-dir`)."""
    project.mkdir()
    config = project / "rollback.yaml"
    config.write_text(
        "services:\n"
        "  shop:\n"
        f"    app: {{provider: docker, docker: {{container: shop, docker_host: 'unix://{docker_socket}'}}}}\n"
        "    health: {url: 'http://127.0.0.1:9/health'}\n"
        "    database: {dsn_env: SHOP_DATABASE_URL}\n")
    return config


def printed_exports(output: str) -> dict[str, str]:
    """The `export …` line `up` prints for other shells, read the way a shell reads it."""
    line = next(line for line in output.splitlines() if line.strip().startswith("export "))
    return dict(word.split("=", 1) for word in shlex.split(line)[1:])


def test_up_refuses_an_unset_secret_before_starting_anything(tmp_path):
    config = quick_path_config(tmp_path / "project", tmp_path / "no-docker.sock")
    port = engines.free_port()
    proc = subprocess.run([ROLLBACK, "up", "--no-demo", "--port", str(port), "--data-dir", str(tmp_path / "data")],
                          capture_output=True, text=True, env=up_env(), cwd=config.parent, timeout=60)
    assert proc.returncode == 1, proc
    assert proc.stderr.strip() == "error: service 'shop': environment variable SHOP_DATABASE_URL is not set"
    assert not engines.port_open("127.0.0.1", port) and not (tmp_path / "data" / "temporal").exists()


@pytest.mark.postgres
def test_readme_quick_path_without_demo_on_other_ports(tmp_path, postgres):
    """`rollback up --no-demo` on non-default ports, then every CLI call in another shell works
    from the printed export line alone, and listings show what the worker wrote under --data-dir."""
    _, dsn = create_database(postgres, "newcomer")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
        conn.execute("INSERT INTO orders SELECT generate_series(1, 7)")
    docker_socket = tmp_path / "no-docker.sock"
    config = quick_path_config(tmp_path / "project", docker_socket)
    data_dir = tmp_path / "data"
    ports = [engines.free_port() for _ in range(3)]
    output: queue.Queue[str] = queue.Queue()
    up = subprocess.Popen(
        [ROLLBACK, "up", "--no-demo", "--data-dir", str(data_dir), "--port", str(ports[0]), "--ui-port",
         str(ports[1]), "--webhook-port", str(ports[2])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=config.parent,
        env={**up_env(), "SHOP_DATABASE_URL": dsn})
    threading.Thread(target=lambda: [output.put(line) for line in up.stdout], daemon=True).start()
    printed = ""
    try:
        while "press Ctrl-C" not in printed:
            printed += output.get(timeout=90)

        assert f"Temporal server:   started on 127.0.0.1:{ports[0]}" in printed
        assert (f"Docker engine:     unix://{docker_socket} (docker_host) for shop: DOES NOT ANSWER" in printed)
        assert "PostgreSQL:        not started here; shop connects through $SHOP_DATABASE_URL" in printed
        exports = printed_exports(printed)
        assert exports["TEMPORAL_ADDRESS"] == f"127.0.0.1:{ports[0]}"
        assert printed_exports((data_dir / "cli.env").read_text()) == exports  # `source data/cli.env` does the same

        # another shell, elsewhere: only the printed exports (and the secret the person set)
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        shell = {**up_env(), **exports, "SHOP_DATABASE_URL": dsn}

        def rollback(*args: str) -> subprocess.CompletedProcess:
            proc = subprocess.run([ROLLBACK, *args], capture_output=True, text=True, env=shell, cwd=elsewhere,
                                  timeout=120)
            assert proc.returncode == 0, f"rollback {' '.join(args)}: {proc.stdout}{proc.stderr}"
            return proc

        assert rollback("config", "check").stdout.strip() == "1 service(s) configured: shop"
        assert rollback("list").stdout.strip() == "no rollbacks yet"
        made = rollback("backup", "shop", "--wait").stdout.strip().splitlines()[-1]
        assert made.startswith("VERIFIED: backup shop-") and "1 tables, 7 rows" in made
        backups = json.loads(rollback("backups", "list", "shop", "--json").stdout)
        assert len(backups) == 1, "`backups list` must show the backup the worker just wrote"
        listed = backups[0]
        assert made.startswith(f"VERIFIED: backup {listed['backup_id']} ")
        # the listing is what the worker wrote: under up's --data-dir, not the config's default
        assert Path(listed["archive"]).parent == data_dir / "state" / "backups" / "shop"
        assert Path(listed["archive"]).exists()
        assert "backup-shop" in rollback("list").stdout
        assert rollback("status", "backup-shop").stdout.startswith("backup-shop: ")
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=60)
        finally:
            up.kill()
    assert up.returncode == 0
    assert not engines.port_open("127.0.0.1", ports[0])


def test_up_names_the_engines_the_services_expect(docker_engine, tmp_path, monkeypatch):
    from starter.up import expected_engines
    from workflows.config import load_config

    dead = f"unix://{tmp_path / 'no-docker.sock'}"
    monkeypatch.setenv("DOCKER_HOST", dead)
    config = tmp_path / "rollback.yaml"
    config.write_text(
        "services:\n"
        f"  web: {{app: {{provider: docker, docker: {{container: web, docker_host: '{docker_engine.address}'}}}},"
        "         health: {url: 'http://127.0.0.1:9/h'}}\n"
        "  shop: {app: {provider: compose, compose: {project: p, service: s, file: c.yml, image_env: IMG}},"
        "         health: {url: 'http://127.0.0.1:9/h'}, database: {dsn_env: SHOP_DSN}}\n"
        "  api: {app: {provider: docker, docker: {container: api}}, health: {url: 'http://127.0.0.1:9/h'}}\n")
    assert expected_engines(load_config(config)) == [
        f"Docker engine:     {dead} (DOCKER_HOST) for api, shop: DOES NOT ANSWER; rollbacks of these services "
        "fail until an engine runs there (or set docker_host in the config, or DOCKER_HOST)",
        f"Docker engine:     {docker_engine.address} (docker_host) for web: answers",
        "PostgreSQL:        not started here; shop connects through $SHOP_DSN",
    ]
