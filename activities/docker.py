"""Docker Engine: find the previous image, capture state, recreate a container on another image.

The docker SDK is synchronous, so each activity runs its work in a thread. Image IDs
(``sha256:…``) are recorded in a per-service deploy ledger each time we see a container, so a
retagged ``latest`` cannot change which image "previous" means.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.backups import sha256_of
from activities.common import (ConfigSource, beating, fail, in_thread, inside, redact_env_list, write_artifact,
                               write_json_atomic)
from activities.envstore import EnvStore
from activities.state import StateStore, state_store
from workflows.config import ComposeTarget, DockerTarget, RollbackConfig
from workflows.models import (
    check_backup_id,
    AppVersion,
    ArchiveRequest,
    CaptureRequest,
    CaptureResult,
    EnvReadRequest,
    EnvSetRequest,
    EnvSetResult,
    EnvSnapshot,
    ExecuteRequest,
    ExecuteResult,
    ServiceRef,
    TargetRequest,
    UndoRequest,
    VolumeBackupRequest,
    VolumeManifest,
    VolumePutBackRequest,
    VolumeRestoreRequest,
)

KEY_LABEL = "io.rollback.key"
VERSION_LABELS = ("org.opencontainers.image.version", "version")
SCHEMA_LABEL = "io.rollback.schema-version"
# Config keys whose value usually comes from the image; a value equal to the image's is dropped
# so that the target image's own default applies (what watchtower does).
IMAGE_DERIVED = ("Cmd", "Entrypoint", "WorkingDir", "User", "ExposedPorts", "Volumes", "Healthcheck")


def connect(target: DockerTarget | ComposeTarget) -> docker.DockerClient:
    try:
        if target.docker_host:
            return docker.DockerClient(base_url=target.docker_host, timeout=60)
        return docker.from_env(timeout=60)
    except DockerException as exc:
        raise ApplicationError(f"cannot reach the Docker engine: {exc}", type="DockerUnavailable") from None


def version_of(client: docker.DockerClient, image_id: str) -> AppVersion:
    image = client.images.get(image_id)
    labels = image.attrs.get("Config", {}).get("Labels") or {}
    version = next((labels[k] for k in VERSION_LABELS if labels.get(k)), None)
    return AppVersion(
        provider="docker",
        id=image.id,
        label=", ".join(image.tags) or image.id[:19],
        version=version,
        schema_version=labels.get(SCHEMA_LABEL),
        details={"created": image.attrs.get("Created")},
    )


def aside_name(container: str, rollback_key: str) -> str:
    """Where the original container waits during a rollback; stable across worker restarts."""
    return f"{container}-before-rollback-{hashlib.sha256(rollback_key.encode()).hexdigest()[:10]}"


def deploy(client: docker.DockerClient, name: str, image: str, ledger: DeployLedger | None = None) -> str:
    """A plain forward deploy of `image` to container `name` (used by the demo and tests).

    Unlike a rollback it does not keep the old container: that is what deploy tools do.
    Returns the new image ID and records it in the ledger.
    """
    image_id = client.images.get(image).id
    old = client.containers.get(name)
    if old.attrs["Image"] != image_id:
        previous = f"{name}-deploy-previous"
        recreate(client, name, image_id, aside_name=previous, labels={}, settle_seconds=0.5)
        client.containers.get(previous).remove(force=True)
    if ledger is not None:
        ledger.record(image_id, image)
    return image_id


class DeployLedger:
    """The images a service's container has run, oldest first, in the shared state store (a
    second worker and a retry see the same history; each change is one atomic update)."""

    KIND = "docker-ledger"

    def __init__(self, store: StateStore, service: str):
        self.store, self.service = store, service

    @classmethod
    def of(cls, config: RollbackConfig, service: str) -> "DeployLedger":
        return cls(state_store(config), service)

    def entries(self) -> list[dict[str, Any]]:
        return self.store.get(self.KIND, self.service, {"deploys": []})["deploys"]

    def record(self, image_id: str, ref: str) -> None:
        def add(ledger: dict) -> dict:
            entries = ledger["deploys"]
            if not entries or entries[-1]["image_id"] != image_id:
                entries.append({"image_id": image_id, "ref": ref, "seen_at": datetime.now(timezone.utc).isoformat(),
                                "bad": False})
            return ledger

        if not self.entries() or self.entries()[-1]["image_id"] != image_id:  # most calls change nothing
            self.store.update(self.KIND, self.service, add, {"deploys": []})

    def mark_bad(self, image_id: str) -> None:
        def mark(ledger: dict) -> dict:
            for entry in ledger["deploys"]:
                if entry["image_id"] == image_id:
                    entry["bad"] = True
            return ledger

        self.store.update(self.KIND, self.service, mark, {"deploys": []})


def own_env(client: docker.DockerClient, attrs: dict[str, Any]) -> dict[str, str]:
    """The variables a container was given (`-e`, compose `environment:`), without the ones it
    merely inherited unchanged from its image (PATH and the like)."""
    try:
        image_env = set(client.images.get(attrs["Image"]).attrs.get("Config", {}).get("Env") or [])
    except ImageNotFound:
        image_env = set()
    pairs = [item.partition("=") for item in attrs["Config"].get("Env") or [] if item not in image_env]
    return {name: value for name, _, value in pairs}


def _new_config(client: docker.DockerClient, old: dict[str, Any], image_id: str, labels: dict[str, str],
                env: dict[str, str] | None = None) -> dict:
    """The old container's own settings, minus what merely came from its image; `env`, when
    given, replaces the container's own variables (containers are immutable: new env = new container)."""
    config = old["Config"]
    try:
        image_config = client.images.get(old["Image"]).attrs.get("Config") or {}
    except ImageNotFound:
        image_config = {}
    image_env = set(image_config.get("Env") or [])
    image_labels = image_config.get("Labels") or {}
    kept_labels = {k: v for k, v in (config.get("Labels") or {}).items() if image_labels.get(k) != v}
    kept_labels.pop(KEY_LABEL, None)
    kept_labels.update(labels)
    kwargs: dict[str, Any] = {
        "image": image_id,
        "environment": [e for e in (config.get("Env") or []) if e not in image_env],
        "labels": kept_labels,
        "tty": config.get("Tty", False),
        "stdin_open": config.get("OpenStdin", False),
    }
    if env is not None:
        kwargs["environment"] = [f"{name}={value}" for name, value in env.items()]
    for key, argument in (("Cmd", "command"), ("Entrypoint", "entrypoint"), ("WorkingDir", "working_dir"), ("User", "user")):
        if config.get(key) and config.get(key) != image_config.get(key):
            kwargs[argument] = config[key]
    return kwargs


def recreate(
    client: docker.DockerClient,
    name: str,
    image_id: str,
    *,
    aside_name: str,
    labels: dict[str, str],
    stop_timeout: int = 10,
    settle_seconds: float = 1.5,
    volumes: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, str]:
    """Swap container `name` onto `image_id` (and `env`, when given), keeping the old container
    aside (stopped).

    The new container is created first, under a staging name, while the old one still serves:
    the outage is only stop + two renames + start. Safe to call again after a crash at any
    point: it recognises the new container by its key label (or its staging name) and the old
    one by its aside name. If the new container does not stay running, the old one is put back
    and a non-retryable error is raised.
    """
    key = labels.get(KEY_LABEL)
    current, aside, staged = (_container(client, n) for n in (name, aside_name, staged_name(aside_name)))

    if current is not None and key and current.labels.get(KEY_LABEL) == key:
        new = current  # a previous attempt already swapped it in
    else:
        if current is not None and aside is not None:
            raise fail(
                f"both {name} and {aside_name} exist and {name} was not created by this rollback; "
                f"inspect them and remove or rename one before retrying"
            )
        source = current if current is not None else aside
        if source is None:
            raise fail(f"container {name!r} not found on the Docker engine; nothing to roll back")
        if staged is None:
            staged = _create_like(client, source.attrs, staged_name(aside_name), image_id, labels, env, volumes)
        # the outage starts here
        if current is not None:
            current.stop(timeout=stop_timeout)
            current.rename(aside_name)
            aside = current
        staged.rename(name)
        new = staged

    new.reload()
    if new.status != "running":
        new.start()
    time.sleep(settle_seconds)
    new.reload()
    if new.status != "running":
        logs = new.logs(tail=20).decode(errors="replace")
        exit_code = new.attrs["State"].get("ExitCode")
        restore(client, name, aside_name, new.id)
        raise fail(
            f"container {name} on image {image_id[:19]} did not stay running (exit code {exit_code}); "
            f"the original container was put back. Last log lines: {logs.strip()[-500:]}"
        )
    return {"container": name, "new_container_id": new.id, "aside_name": aside_name, "old_container_id": aside.id}


def tar_files(archive: Path) -> int:
    """Read a whole tar (a truncated or corrupt one raises); the number of members."""
    import tarfile

    try:
        with tarfile.open(archive) as tar:
            return sum(1 for _ in tar)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise fail(f"volume backup {archive} does not read back: {exc}", kind="BackupInvalid") from None


def swap_volumes(host_config: dict[str, Any], volumes: dict[str, str]) -> dict[str, Any]:
    """The same mounts with named volumes replaced (old name -> new name), `-v` and `--mount` alike."""
    if not volumes:
        return host_config
    binds = []
    for bind in host_config.get("Binds") or []:
        source, sep, rest = bind.partition(":")
        binds.append(f"{volumes.get(source, source)}{sep}{rest}")
    mounts = [dict(m, Source=volumes.get(m.get("Source"), m.get("Source"))) if m.get("Type") == "volume" else m
              for m in host_config.get("Mounts") or []]
    return {**host_config, "Binds": binds or None, "Mounts": mounts or None}


def staged_name(aside_name: str) -> str:
    """Where the new container waits, created, until the old one stops."""
    return f"{aside_name}-new"


def _container(client: docker.DockerClient, name: str):
    try:
        return client.containers.get(name)
    except NotFound:
        return None


def _create_like(client: docker.DockerClient, old_attrs: dict, name: str, image_id: str, labels: dict[str, str],
                 env: dict[str, str] | None, volumes: dict[str, str] | None):
    """A container with the old one's settings on `image_id`, created (not started) as `name`."""
    kwargs = _new_config(client, old_attrs, image_id, labels, env)
    host_config = swap_volumes(dict(old_attrs["HostConfig"]), volumes or {})
    networks = old_attrs.get("NetworkSettings", {}).get("Networks") or {}
    network_mode = host_config.get("NetworkMode", "default")
    networking_config = None
    others: list[str] = []
    if network_mode not in ("host", "none") and not network_mode.startswith("container:") and networks:
        first, *others = list(networks)
        networking_config = {"EndpointsConfig": {first: {"Aliases": networks[first].get("Aliases")}}}
    created = client.api.create_container(name=name, host_config=host_config, networking_config=networking_config,
                                          **kwargs)
    new = client.containers.get(created["Id"])
    for network in others:
        client.networks.get(network).connect(new, aliases=networks[network].get("Aliases"))
    return new


def restore(client: docker.DockerClient, name: str, aside_name: str, new_container_id: str | None) -> str:
    """Put the aside container back under its name and start it; idempotent. A new container
    still waiting under its staging name (a crash before the swap) is removed."""
    staged = _container(client, staged_name(aside_name))
    if staged is not None:
        staged.remove(force=True)
    try:
        aside = client.containers.get(aside_name)
    except NotFound:
        aside = None
    try:
        current = client.containers.get(name)
    except NotFound:
        current = None
    if aside is None:
        if current is not None and current.id != new_container_id:
            current.reload()
            if current.status != "running":
                current.start()
            return current.id  # already restored by an earlier attempt
        raise fail(f"cannot restore {name}: the original container {aside_name} no longer exists")
    if current is not None:
        current.remove(force=True)
    aside.rename(name)
    aside.start()
    return aside.id


def select_from_ledger(client: docker.DockerClient, ledger: DeployLedger, request: TargetRequest,
                       what: str) -> AppVersion:
    """The explicit image (marked when we rolled away from it before: re-deploying it needs an
    approval), else the newest recorded image that is not current and not rolled away from."""
    if request.explicit:
        try:
            chosen = version_of(client, request.explicit)
        except ImageNotFound:
            raise fail(f"image {request.explicit!r} is not present on the Docker engine") from None
        rolled_away = {entry["image_id"] for entry in ledger.entries() if entry["bad"]}
        chosen = chosen.model_copy(update={"rolled_back_from": chosen.id in rolled_away})
    else:
        chosen = None
        for entry in reversed(ledger.entries()):
            if entry["image_id"] == request.current.id or entry["bad"]:
                continue
            try:
                chosen = version_of(client, entry["image_id"])
                break
            except ImageNotFound:
                continue
        if chosen is None:
            raise fail(f"service {request.service!r}: no earlier image recorded for {what}; "
                       "pass an explicit target (--to IMAGE)")
    if chosen.id == request.current.id:
        raise fail(f"target {chosen.label} is the image the container already runs; nothing to roll back")
    return chosen


def capture_container(client: docker.DockerClient, container, artifact_dir: str, secrets: set[str]) -> CaptureResult:
    """Runbook 004's pre-rollback checklist: inspect, logs, ps, images, env with secrets redacted
    (by variable name, and by value everywhere: URL passwords, webhook paths, tokens, the
    configured secrets)."""
    out = Path(artifact_dir)
    inspect = json.loads(json.dumps(container.attrs))
    inspect["Config"]["Env"] = redact_env_list(inspect["Config"].get("Env") or [], secrets)
    files = {
        "container-inspect.json": json.dumps(inspect, indent=2),
        "container-logs.txt": container.logs(tail=500, timestamps=True).decode(errors="replace"),
        "container-env.txt": "\n".join(inspect["Config"]["Env"]) + "\n",
        "ps.txt": "\n".join(
            f"{c.short_id}\t{c.name}\t{c.attrs['Config'].get('Image')}\t{c.status}"
            for c in client.containers.list(all=True)
        ) + "\n",
        "images.txt": "\n".join(f"{i.id}\t{','.join(i.tags)}" for i in client.images.list()) + "\n",
    }
    return CaptureResult(files=[str(write_artifact(out / name, text, secrets)) for name, text in files.items()])


class _EngineActivities:
    """What the plain-container and the compose providers share: the ledger, finding the
    current and previous image, and capturing state. Subclasses say how to find the container."""

    provider = ""

    def __init__(self, config: ConfigSource):
        self._config = config

    def _target(self, service: str):
        target = getattr(self._config.service(service).app, self.provider)
        if target is None:
            raise fail(f"service {service!r} has no {self.provider} app target")
        return target

    def _ledger(self, service: str) -> DeployLedger:
        return DeployLedger(self._config.state, service)

    def _container(self, client: docker.DockerClient, target, service: str):
        raise NotImplementedError

    def _describe(self, target) -> str:
        raise NotImplementedError

    def _current(self, service: str) -> AppVersion:
        target = self._target(service)
        client = connect(target)
        container = self._container(client, target, service)
        self._ledger(service).record(container.attrs["Image"], container.attrs["Config"].get("Image", ""))
        version = version_of(client, container.attrs["Image"])
        version.provider = self.provider
        version.details.update(container_id=container.id, status=container.status)
        return version

    def _select(self, request: TargetRequest) -> AppVersion:
        target = self._target(request.service)
        chosen = select_from_ledger(connect(target), self._ledger(request.service), request, self._describe(target))
        chosen.provider = self.provider
        return chosen

    def _env_read(self, request: EnvReadRequest) -> EnvSnapshot:
        """Record the container's own environment; a container is one deployment (its ID)."""
        target = self._target(request.service)
        client = connect(target)
        container = self._container(client, target, request.service)
        label = f"{container.name} on {container.attrs['Config'].get('Image', '')}"
        return EnvStore(self._config).record(request.service, self.provider, container.id[:12], label,
                                             own_env(client, container.attrs), healthy=request.healthy,
                                             reason=request.reason)

    def _wanted_env(self, request: EnvSetRequest, current: dict[str, str]) -> tuple[dict[str, str], list[str], list[str]]:
        """The container's variables after the change, and which names were set and removed."""
        values, _ = EnvStore(self._config).get(request.service, request.ref)
        names = request.names or sorted(values)
        missing = [n for n in names if n not in values]
        if missing:
            raise fail(f"stored environment {request.ref} has no value for {', '.join(missing)}; nothing was changed",
                       kind="EnvRefUnknown")
        wanted = {k: v for k, v in current.items() if k not in request.remove}
        wanted.update({n: values[n] for n in names})
        changed = [n for n in names if current.get(n) != values[n]]
        removed = [n for n in request.remove if n in current]
        return wanted, changed, removed

    def _capture(self, request: CaptureRequest) -> CaptureResult:
        target = self._target(request.service)
        client = connect(target)
        return capture_container(client, self._container(client, target, request.service), request.artifact_dir,
                                 self._config.secrets())


class DockerActivities(_EngineActivities):
    provider = "docker"

    def _container(self, client: docker.DockerClient, target: DockerTarget, service: str):
        try:
            return client.containers.get(target.container)
        except NotFound:
            raise fail(f"service {service!r}: container {target.container!r} not found on the Docker engine") from None

    def _describe(self, target: DockerTarget) -> str:
        return f"container {target.container!r}"

    @activity.defn(name="docker.current")
    async def current(self, request: ServiceRef) -> AppVersion:
        return await asyncio.to_thread(self._current, request.service)

    @activity.defn(name="docker.select_target")
    async def select_target(self, request: TargetRequest) -> AppVersion:
        return await asyncio.to_thread(self._select, request)

    @activity.defn(name="docker.capture_state")
    async def capture_state(self, request: CaptureRequest) -> CaptureResult:
        return await asyncio.to_thread(self._capture, request)

    def _execute(self, request: ExecuteRequest) -> ExecuteResult:
        target = self._target(request.service)
        client = connect(target)
        aside = aside_name(target.container, request.rollback_key)
        try:
            details = recreate(
                client,
                target.container,
                request.target.id,
                aside_name=aside,
                labels={KEY_LABEL: request.rollback_key},
                stop_timeout=target.stop_timeout,
            )
        except APIError as exc:
            raise ApplicationError(f"Docker engine error while recreating {target.container}: {exc}") from None
        self._ledger(request.service).mark_bad(request.current.id)
        return ExecuteResult(provider="docker", details=details)

    @activity.defn(name="docker.execute")
    async def execute(self, request: ExecuteRequest) -> ExecuteResult:
        return await in_thread(self._execute, request, details={"recreating": request.service})

    def _undo(self, request: UndoRequest) -> ExecuteResult:
        target = self._target(request.service)
        client = connect(target)
        details = (request.executed.details if request.executed else {}) or {}
        aside = details.get("aside_name") or aside_name(target.container, request.rollback_key)
        restored = restore(client, target.container, aside, details.get("new_container_id"))
        return ExecuteResult(provider="docker", details={"restored_container_id": restored})

    @activity.defn(name="docker.undo")
    async def undo(self, request: UndoRequest) -> ExecuteResult:
        return await in_thread(self._undo, request, details={"putting back": request.service})

    @activity.defn(name="docker.env_read")
    async def env_read(self, request: EnvReadRequest) -> EnvSnapshot:
        return await asyncio.to_thread(self._env_read, request)

    def _env_set(self, request: EnvSetRequest) -> EnvSetResult:
        """Recreate the container on the same image with the changed variables (the old one kept
        aside, stopped, and put back if the new one does not stay running). A retry finds the
        container it made by its key label."""
        target = self._target(request.service)
        client = connect(target)
        container = self._container(client, target, request.service)
        if container.labels.get(KEY_LABEL) == request.change_key:  # an earlier attempt finished
            return EnvSetResult(provider="docker", deployment=container.id[:12], details={"container": container.id})
        wanted, changed, removed = self._wanted_env(request, own_env(client, container.attrs))
        try:
            details = recreate(client, target.container, container.attrs["Image"],
                               aside_name=aside_name(target.container, request.change_key),
                               labels={KEY_LABEL: request.change_key}, stop_timeout=target.stop_timeout, env=wanted)
        except APIError as exc:
            raise ApplicationError(f"Docker engine error while recreating {target.container}: {exc}") from None
        return EnvSetResult(provider="docker", deployment=details["new_container_id"][:12], set=changed,
                            removed=removed, details=details)

    @activity.defn(name="docker.env_set")
    async def env_set(self, request: EnvSetRequest) -> EnvSetResult:
        return await in_thread(self._env_set, request, details={"recreating with new env": request.service})

    # -- named volumes (runbook 004, option 3) ----------------------------------------------------
    def volume_dir(self, service: str) -> Path:
        target = self._target(service)
        directory = Path(target.volume_backup_dir or Path(self._config.config.state_dir) / "volume-backups" / service)
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def volume_manifests(self, service: str) -> list[VolumeManifest]:
        """The service's volume backups, newest first (what `rollback volume list` prints)."""
        found = [VolumeManifest.model_validate_json(p.read_text()) for p in self.volume_dir(service).glob("*.json")]
        return sorted(found, key=lambda m: m.created_at, reverse=True)

    def _volume_backup(self, request: VolumeBackupRequest) -> VolumeManifest:
        """The volume's files as a tar (through the engine's archive API, from the service's own
        container: no helper image), sha256, and a full read of the tar; one archive per id."""
        manifest_file = self.volume_dir(request.service) / f"{request.backup_id}.json"
        if manifest_file.exists():
            existing = VolumeManifest.model_validate_json(manifest_file.read_text())
            if existing.verified:
                return existing
        target = self._target(request.service)
        container = self._container(connect(target), target, request.service)
        mounts = [m for m in container.attrs.get("Mounts") or [] if m.get("Type") == "volume"]
        mount = next((m for m in mounts if m.get("Name") == request.volume), None)
        if mount is None:
            raise fail(f"container {target.container} mounts no volume {request.volume!r} (its volumes: "
                       f"{', '.join(m.get('Name', '?') for m in mounts) or 'none'})")
        archive = manifest_file.with_suffix(".tar")
        partial = archive.with_name(f"{archive.name}.partial")
        digest = hashlib.sha256()
        stream, _ = container.get_archive(mount["Destination"])
        with partial.open("wb") as fh:
            for chunk in stream:
                digest.update(chunk)
                fh.write(chunk)
                activity.heartbeat({"bytes": fh.tell()})
        partial.replace(archive)
        files = tar_files(archive)
        manifest = VolumeManifest(backup_id=request.backup_id, service=request.service, volume=request.volume,
                                  container=target.container, mount_path=mount["Destination"], archive=str(archive),
                                  size_bytes=archive.stat().st_size, sha256=digest.hexdigest(), files=files,
                                  created_at=datetime.now(timezone.utc), verified=True)
        write_json_atomic(manifest_file, manifest.model_dump(mode="json"))
        return manifest

    # the volume activities are synchronous (they run in the worker's thread pool and heartbeat
    # from a side thread through every blocking call)
    @activity.defn(name="docker.volume_backup")
    def volume_backup(self, request: VolumeBackupRequest) -> VolumeManifest:
        with beating({"volume backup": request.volume}):
            return self._volume_backup(request)

    def _volume_validate(self, service: str, backup_id: str) -> VolumeManifest:
        try:
            check_backup_id(backup_id)
        except ValueError as exc:
            raise fail(f"{exc}; nothing was changed", kind="BackupInvalid") from None
        directory = self.volume_dir(service)
        manifest_file = directory / f"{backup_id}.json"
        if not manifest_file.exists():
            raise fail(f"no volume backup {backup_id!r} in {manifest_file.parent} (see `rollback volume list`)",
                       kind="BackupInvalid")
        manifest = VolumeManifest.model_validate_json(inside(directory, manifest_file, "manifest").read_text())
        if manifest.backup_id != backup_id or manifest.service != service:
            raise fail(f"manifest {manifest_file} describes {manifest.backup_id} of {manifest.service}, not "
                       f"{backup_id}; nothing was changed", kind="BackupInvalid")
        archive = inside(directory, Path(manifest.archive), "volume archive")
        if not archive.exists() or sha256_of(archive) != manifest.sha256:
            raise fail(f"volume backup {archive} is missing or does not match its sha256; nothing was changed",
                       kind="BackupInvalid")
        tar_files(archive)  # a full read
        return manifest

    @activity.defn(name="docker.volume_validate")
    def volume_validate(self, request: ArchiveRequest) -> VolumeManifest:
        with beating({"reading": request.archive}):
            return self._volume_validate(request.service, request.archive)

    def _volume_restore(self, request: VolumeRestoreRequest) -> dict[str, str]:
        """A new volume filled from the tar, then the container recreated on it (the old container
        kept aside, stopped; the old volume kept). Safe to repeat."""
        manifest = self._volume_validate(request.service, request.backup_id)
        target = self._target(request.service)
        client = connect(target)
        try:
            current = client.containers.get(target.container)
            if current.labels.get(KEY_LABEL) == request.rollback_key:  # an earlier attempt finished
                return {"container": target.container, "new_container_id": current.id,
                        "aside_name": aside_name(target.container, request.rollback_key)}
        except NotFound:
            pass
        # A worker killed mid-fill leaves its helper container holding the half-filled volume: the
        # volume cannot be removed (409 "in use") nor the helper's name reused, so every retry
        # failed and the run ended with both left behind. Ours (by the key label) goes first.
        try:
            stale = client.containers.get(f"{request.new_volume}-fill")
            if stale.labels.get("io.rollback.helper") == request.rollback_key:
                stale.remove(force=True)
        except NotFound:
            pass
        try:
            client.volumes.get(request.new_volume).remove()  # half-filled by an earlier attempt
        except NotFound:
            pass
        client.volumes.create(request.new_volume, labels={"io.rollback.restored-from": manifest.backup_id})
        # the original container's image: after a crash mid-recreate it is the one kept aside
        try:
            original = client.containers.get(aside_name(target.container, request.rollback_key))
        except NotFound:
            original = self._container(client, target, request.service)
        image = original.attrs["Image"]
        helper = client.containers.create(image, name=f"{request.new_volume}-fill",
                                          volumes={request.new_volume: {"bind": manifest.mount_path, "mode": "rw"}},
                                          labels={"io.rollback.helper": request.rollback_key})
        def chunks():  # streamed, with a heartbeat per MiB: a big volume takes a while
            with open(manifest.archive, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    activity.heartbeat({"filling": request.new_volume})
                    yield block

        try:  # the tar's top entry is the mount's own directory
            if not helper.put_archive(os.path.dirname(manifest.mount_path.rstrip("/")) or "/", chunks()):
                raise ApplicationError(f"could not fill volume {request.new_volume}")
        finally:
            helper.remove(force=True)
        details = recreate(client, target.container, image, aside_name=aside_name(target.container, request.rollback_key),
                           labels={KEY_LABEL: request.rollback_key}, stop_timeout=target.stop_timeout,
                           volumes={manifest.volume: request.new_volume})
        return {**details, "old_volume": manifest.volume, "new_volume": request.new_volume}

    @activity.defn(name="docker.volume_restore")
    def volume_restore(self, request: VolumeRestoreRequest) -> dict[str, str]:
        with beating({"restoring into": request.new_volume}):
            return self._volume_restore(request)

    @activity.defn(name="docker.put_back")
    def put_back(self, request: VolumePutBackRequest) -> str:
        """The container kept aside (on the old volume) back under its name."""
        target = self._target(request.service)
        with beating({"putting back": target.container}):
            return restore(connect(target), target.container, request.details["aside_name"],
                           request.details.get("new_container_id"))


class ComposeActivities(_EngineActivities):
    """Compose-managed services: pin the image through the compose file's image variable and let
    `docker-compose -p P up -d --no-deps SERVICE` recreate that one service (never the API).

    The compose file must read the image from a variable, e.g. ``image: ${WEB_IMAGE:-web:latest}``.
    """

    provider = "compose"

    def _container(self, client: docker.DockerClient, target: ComposeTarget, service: str):
        labels = [f"com.docker.compose.project={target.project}", f"com.docker.compose.service={target.service}"]
        containers = client.containers.list(all=True, filters={"label": labels})
        if not containers:
            raise fail(f"service {service!r}: no container of compose service {target.service!r} in project "
                       f"{target.project!r}")
        return sorted(containers, key=lambda c: c.status != "running")[0]

    def _describe(self, target: ComposeTarget) -> str:
        return f"compose service {target.service!r}"

    @activity.defn(name="compose.current")
    async def current(self, request: ServiceRef) -> AppVersion:
        return await asyncio.to_thread(self._current, request.service)

    @activity.defn(name="compose.select_target")
    async def select_target(self, request: TargetRequest) -> AppVersion:
        return await asyncio.to_thread(self._select, request)

    @activity.defn(name="compose.capture_state")
    async def capture_state(self, request: CaptureRequest) -> CaptureResult:
        return await asyncio.to_thread(self._capture, request)

    def _up(self, service: str, image_id: str, settle_seconds: float = 1.5) -> dict[str, str]:
        """Recreate the service on `image_id`; idempotent (compose converges on the same pin)."""
        target = self._target(service)
        env = {**os.environ, target.image_env: image_id}
        if target.docker_host:
            env["DOCKER_HOST"] = target.docker_host
        command = ["docker-compose", "-p", target.project, "-f", target.file, "up", "-d", "--no-deps", target.service]
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
        except FileNotFoundError:
            raise fail("docker-compose is not installed on the worker (apt-get install docker-compose)") from None
        if done.returncode != 0:
            raise ApplicationError(f"docker-compose up for {target.service} failed: {done.stderr.strip()[-400:]}")
        time.sleep(settle_seconds)
        client = connect(target)
        container = self._container(client, target, service)
        if container.attrs["Image"] != image_id or container.status != "running":
            raise ApplicationError(f"compose service {target.service} is {container.status} on "
                                   f"{container.attrs['Image'][:19]}, expected running on {image_id[:19]}")
        return {"container_id": container.id, "pinned": f"{target.image_env}={image_id}"}

    def _execute(self, request: ExecuteRequest) -> ExecuteResult:
        try:
            details = self._up(request.service, request.target.id)
        except ApplicationError:
            self._up(request.service, request.current.id)  # never leave the service without a version
            raise
        self._ledger(request.service).mark_bad(request.current.id)
        return ExecuteResult(provider="compose", details=details)

    @activity.defn(name="compose.execute")
    async def execute(self, request: ExecuteRequest) -> ExecuteResult:
        return await in_thread(self._execute, request, details={"recreating": request.service})

    @activity.defn(name="compose.env_read")
    async def env_read(self, request: EnvReadRequest) -> EnvSnapshot:
        return await asyncio.to_thread(self._env_read, request)

    @activity.defn(name="compose.env_set")
    async def env_set(self, request: EnvSetRequest) -> EnvSetResult:
        """The compose file owns a compose service's environment: changing it behind compose's
        back would be undone by the next `up`. Refused with what to do instead."""
        target = self._target(request.service)
        raise fail(f"service {request.service!r} is compose service {target.service!r}: its environment lives in "
                   f"{target.file}; `rollback env diff` shows what changed, set it back there (or `rollback config "
                   "revert` when the file is in git) and run `docker-compose up -d`; nothing was changed",
                   kind="EnvNotSupported")

    @activity.defn(name="compose.undo")
    async def undo(self, request: UndoRequest) -> ExecuteResult:
        details = await in_thread(self._up, request.service, request.current.id,
                                  details={"putting back": request.service})
        return ExecuteResult(provider="compose", details=details)
