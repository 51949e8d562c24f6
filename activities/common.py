"""Helpers every activity module shares: config access, secrets, state files, redaction."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import os
import re
import ssl
import tempfile
import threading
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, TypeVar

import httpx
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


def http_client(**options: Any) -> httpx.AsyncClient:
    """An httpx client on the process's one TLS context. httpx builds a context per client by
    default, reading the whole CA bundle (about 25 ms of CPU); every activity paid that, and
    activities running side by side paid it one after another under the GIL."""
    return httpx.AsyncClient(verify=_tls_context(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")),
                             **options)


@functools.lru_cache(maxsize=4)
def _tls_context(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    """One context per CA setting (httpx reads SSL_CERT_FILE / SSL_CERT_DIR itself)."""
    return httpx.create_ssl_context()


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

    def secrets(self) -> set[str]:
        """The configured secrets' values, for redacting what the activities write."""
        return known_secrets(self.config)

    @property
    def state(self):
        """The shared state store (activities/state.py): PostgreSQL or the SQLite default."""
        from activities.state import state_store

        try:
            return state_store(self.config)
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


# Secrets hide in values under harmless names: credentials in URLs, webhook paths, tokens.
URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^\s:/?#@]*):([^\s/?#@]+)@")
WEBHOOK_PATHS = re.compile(r"(?i)\b(hooks\.slack\.com/(?:services|workflows|triggers)/|"
                           r"discord(?:app)?\.com/api/webhooks/)[^\s\"'<>]+")
AUTH_WORDS = re.compile(r"(?i)\b(bearer|token|basic)(\s+)[A-Za-z0-9._~+/=-]{8,}")
TOKEN_SHAPES = re.compile(
    r"\b(?:xox[abposr]-[A-Za-z0-9-]{10,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_\w{20,}|glpat-[\w-]{20,}"
    r"|sk_(?:live|test)_\w{16,}|sk-[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|eyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]{8,})")
SHORTEST_KNOWN_SECRET = 6  # shorter values ("on", "true") would blank out ordinary words


def known_secrets(config: RollbackConfig) -> set[str]:
    """The values of every secret variable the config names, as set in the worker's environment."""
    names = {n for service in config.services.values() for n in service.secret_env_names()}
    for source in config.webhooks.sources.values():
        names |= {n for n in (source.bearer_env, source.basic_env, source.secret_env) if n}
    if config.flags.token_env:
        names.add(config.flags.token_env)
    if config.state_dsn_env:
        names.add(config.state_dsn_env)
    values = {v.strip() for name in names for v in os.environ.get(name, "").split(",")}
    return {v for v in values if len(v) >= SHORTEST_KNOWN_SECRET}


def redact_text(text: str, known: set[str] | frozenset[str] = frozenset()) -> str:
    """Text with the configured secrets' values, URL passwords, webhook paths and token-shaped
    strings replaced."""
    for value in sorted(known, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    text = URL_CREDENTIALS.sub(lambda m: f"{m[1]}{m[2]}:{REDACTED}@", text)
    text = WEBHOOK_PATHS.sub(lambda m: m[1] + REDACTED, text)
    text = AUTH_WORDS.sub(lambda m: m[1] + m[2] + REDACTED, text)
    return TOKEN_SHAPES.sub(REDACTED, text)


def redact(pairs: dict[str, str], known: set[str] | frozenset[str] = frozenset()) -> dict[str, str]:
    return {k: (REDACTED if SECRET_NAME.search(k) else redact_text(v, known)) for k, v in pairs.items()}


def redact_env_list(env: list[str], known: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Redact a container's ``KEY=value`` list: by name, as runbook 004's `grep -v` intends, and by value."""
    out = []
    for item in env:
        key, sep, value = item.partition("=")
        out.append(f"{key}={REDACTED}" if sep and SECRET_NAME.search(key) else
                   f"{key}{sep}{redact_text(value, known)}")
    return out


def open_private(path: Path, mode: str = "w"):
    """Open an incident file for writing, readable by the worker's user only: captured state and
    exported rows describe production."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode otherwise
    return os.fdopen(fd, mode)


def write_artifact(path: Path, text: str, known: set[str] | frozenset[str] = frozenset()) -> Path:
    """An incident file, redacted and private."""
    with open_private(path) as fh:
        fh.write(redact_text(text, known))
    return path


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


def inside(directory: Path, path: Path, what: str) -> Path:
    """`path` with every symlink resolved, refused unless it lies inside `directory` (resolved too):
    restores read only what this system wrote into the service's own backup directory."""
    base, resolved = directory.resolve(), path.resolve()
    if resolved != base and base not in resolved.parents:
        raise fail(f"{what} {path} is outside the backup directory {base}: only archives this system wrote "
                   "there can be restored; nothing was changed", kind="BackupInvalid")
    return resolved
