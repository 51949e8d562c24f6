"""Helpers every activity module shares: config access, secrets, state files, redaction."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from workflows.config import ConfigError, RollbackConfig, ServiceConfig, config_path, load_config

T = TypeVar("T")
# Every long or production-changing step beats this often; the workflows give them heartbeat
# timeouts of a few such periods, so a dead worker is noticed in seconds and the retry runs.
HEARTBEAT_SECONDS = 2


async def with_heartbeats(awaitable: Awaitable[T], details: Any) -> T:
    """Await something slow (a Docker call, row counts of a big table) while telling Temporal we
    are alive; cancelling the activity cancels the wait."""
    task = asyncio.ensure_future(awaitable)
    while True:
        try:
            return await asyncio.wait_for(asyncio.shield(task), HEARTBEAT_SECONDS)
        except asyncio.TimeoutError:
            activity.heartbeat(details)
        except asyncio.CancelledError:
            task.cancel()
            raise


async def in_thread(func: Callable[..., T], *args: Any, details: Any) -> T:
    """A blocking call (the docker SDK, docker-compose) off the event loop, heartbeating meanwhile."""
    return await with_heartbeats(asyncio.to_thread(func, *args), details)


@contextlib.contextmanager
def beating(details: Any) -> Iterator[None]:
    """In a synchronous activity: heartbeat from a side thread while blocking calls run."""
    stop = threading.Event()
    context = contextvars.copy_context()  # carries the activity's context into the side thread

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            context.run(activity.heartbeat, details)

    thread = threading.Thread(target=beat, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


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
