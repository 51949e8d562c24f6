"""README command 1 for real: `rollback up` starts the dev server, a private dockerd, the worker
and the webhook receiver, runs the demo rollback, and exits on request."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from starter import engines
from tests.conftest import unavailable

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
    proc = subprocess.Popen(
        [ROLLBACK, "up", "--no-demo", "--data-dir", str(tmp_path / "var"), "--port", str(ports[0]),
         "--ui-port", str(ports[1]), "--webhook-port", str(ports[2])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=up_env(), cwd=tmp_path,
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
