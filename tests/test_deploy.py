"""docker-compose.yml and the Dockerfile, validated without building or pulling anything."""

from __future__ import annotations

import os
import shutil
import subprocess

import yaml

from starter.cli import app
from tests.conftest import ROOT, unavailable
from workflows.base import SEARCH_ATTRIBUTES

SECRETS = {"TEMPORAL_DB_PASSWORD": "pw", "ROLLBACK_WEBHOOK_TOKENS": "tok"}


def compose(*args: str, env: dict) -> subprocess.CompletedProcess:
    binary = shutil.which("docker-compose")
    if not binary:
        unavailable("docker-compose is not installed: apt-get install docker-compose")
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS}
    return subprocess.run([binary, "-f", str(ROOT / "docker-compose.yml"), *args], capture_output=True, text=True,
                          env={**clean, **env}, cwd=ROOT)


def test_compose_file_is_valid_and_complete():
    proc = compose("config", env=SECRETS)
    assert proc.returncode == 0, proc.stderr
    stack = yaml.safe_load(proc.stdout)["services"]
    assert {"postgresql", "temporal", "temporal-ui", "worker", "webhook", "temporal-search-attributes"} <= set(stack)
    registration = " ".join(stack["temporal-search-attributes"]["command"])
    assert all(key.name in registration for key in SEARCH_ATTRIBUTES)
    for service in ("worker", "webhook"):
        verb = stack[service]["command"][0]
        assert verb in app.commands, f"{service} runs `rollback {verb}`, which does not exist"
        assert stack[service]["environment"]["TEMPORAL_ADDRESS"] == "temporal:7233"
    published = [p for s in stack.values() for p in s.get("ports", [])]
    assert published and all(str(p).startswith("127.0.0.1:") for p in published)  # loopback only


def test_compose_refuses_to_run_without_its_secrets():
    proc = compose("config", "-q", env={})
    assert proc.returncode != 0
    assert "set TEMPORAL_DB_PASSWORD" in proc.stderr


def test_dockerfile_ships_every_package():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    for package in ("workflows", "activities", "worker", "starter"):
        assert f"COPY {package} ./{package}" in dockerfile
