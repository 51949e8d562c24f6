"""Helpers every activity module shares: config access, secrets, state files, redaction."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from temporalio.exceptions import ApplicationError

from workflows.config import ConfigError, RollbackConfig, ServiceConfig, config_path, load_config

SECRET_NAME = re.compile(r"PASSWORD|PASSWD|KEY|SECRET|TOKEN|CREDENTIAL|DSN|DATABASE_URL", re.I)
REDACTED = "***redacted***"


def fail(message: str, *, kind: str = "RollbackError") -> ApplicationError:
    """An error retrying cannot fix; the message says what failed and what to do next."""
    return ApplicationError(message, type=kind, non_retryable=True)


class ConfigSource:
    """Gives activities the current config: re-read when the file changes, so edits apply
    without a restart, and parsed once otherwise (every activity asks for it)."""

    def __init__(self, path: str | os.PathLike | None = None, config: RollbackConfig | None = None):
        self._path = path
        self._config = config
        self._loaded: tuple[tuple[float, int], RollbackConfig] | None = None

    @property
    def config(self) -> RollbackConfig:
        if self._config is not None:
            return self._config
        try:
            stat = config_path(self._path).stat()
            stamp = (stat.st_mtime, stat.st_size)
        except OSError:
            stamp = None
        if self._loaded is not None and stamp is not None and self._loaded[0] == stamp:
            return self._loaded[1]
        try:
            loaded = load_config(self._path)
        except ConfigError as exc:
            raise fail(str(exc), kind="ConfigError") from None
        if stamp is not None:
            self._loaded = (stamp, loaded)
        return loaded

    def service(self, name: str) -> ServiceConfig:
        try:
            return self.config.service(name)
        except ConfigError as exc:
            raise fail(str(exc), kind="ConfigError") from None

    def state_path(self, *parts: str) -> Path:
        path = Path(self.config.state_dir).joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


def resolve_secret(env_name: str, service: str) -> str:
    """Read a secret named by the config. Only activities call this, so values stay in the worker."""
    value = os.environ.get(env_name)
    if not value:
        raise fail(
            f"service {service!r}: environment variable {env_name} is not set in the worker; "
            "set it and retry",
            kind="ConfigError",
        )
    return value


def redact(pairs: dict[str, str]) -> dict[str, str]:
    return {k: (REDACTED if SECRET_NAME.search(k) else v) for k, v in pairs.items()}


def redact_env_list(env: list[str]) -> list[str]:
    """Redact a container's ``KEY=value`` list the way runbook 004's `grep -v` intends."""
    out = []
    for item in env:
        key, sep, value = item.partition("=")
        out.append(f"{key}={REDACTED}" if sep and SECRET_NAME.search(key) else item)
    return out


def read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default


def write_json_atomic(path: Path, data: Any) -> None:
    """Write via rename so a crash never leaves a half-written state file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
