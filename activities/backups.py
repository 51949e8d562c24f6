"""Verified PostgreSQL backups: pg_dump to a custom-format archive (or a directory-format one,
dumped with -j N) with a manifest beside it.

A backup is "good" only after its sha256 is recorded and a full read (`pg_restore -f /dev/null`)
exits 0: `pg_restore --list` alone exits 0 on an archive truncated to half its size.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import deque
import shutil
from datetime import datetime, timezone
from pathlib import Path

from pydantic import ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.common import HEARTBEAT_SECONDS, ConfigSource, fail, inside, with_heartbeats, write_json_atomic
from activities.postgres import connect_to, libpq_env, on_loopback_port, service_dsn, table_counts
from workflows.iso_time import TimeFormatError, parse_iso_time
from workflows.models import ArchiveRequest, BackupManifest, BackupRequest, ServiceRef, check_backup_id

def major(version: str) -> int:
    """15 from '15.18 (Debian 15.18-0+deb12u1)'."""
    return int(version.split(".")[0].split()[0])


def sha256_of(path: Path) -> str:
    """A file's sha256; for a directory-format archive, the sha256 of its files' names and hashes."""
    if path.is_dir():
        lines = "".join(f"{f.relative_to(path)} {sha256_of(f)}\n" for f in sorted(path.rglob("*")) if f.is_file())
        return hashlib.sha256(lines.encode()).hexdigest()
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


async def hashed(path: Path) -> str:
    """sha256_of in a thread, heartbeating: a multi-GB archive takes longer than a heartbeat."""
    return await with_heartbeats(asyncio.to_thread(sha256_of, path), {"hashing": str(path)})


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _die_with_parent() -> None:
    """In the child: be killed when the worker dies, so a crashed worker leaves no pg_dump still
    writing beside the retry's."""
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


async def run_tool(args: list[str], env: dict[str, str], progress, on_line=None) -> tuple[int, str]:
    """Run pg_dump/pg_restore, heartbeating `progress()` while it works; killed if the activity is
    cancelled or the worker dies. stderr is read as it comes (a verbose tool would otherwise fill
    the pipe and stall); `on_line` sees each line; the last lines come back for error messages."""
    process = await asyncio.create_subprocess_exec(*args, env=env, stdout=asyncio.subprocess.DEVNULL,
                                                   stderr=asyncio.subprocess.PIPE, preexec_fn=_die_with_parent)
    tail: deque[str] = deque(maxlen=20)

    async def read_stderr() -> None:
        async for raw in process.stderr:
            line = raw.decode(errors="replace").rstrip()
            if on_line is not None:
                on_line(line)
            tail.append(line)

    reader = asyncio.ensure_future(read_stderr())
    try:
        while True:
            try:
                await asyncio.wait_for(asyncio.shield(process.wait()), HEARTBEAT_SECONDS)
                break
            except asyncio.TimeoutError:
                activity.heartbeat(progress())
    except asyncio.CancelledError:
        process.kill()
        await process.wait()
        reader.cancel()
        raise
    await reader
    return process.returncode, "\n".join(tail)


async def full_read_ok(archive: Path) -> tuple[bool, str]:
    """Read the whole archive the way a restore would, writing nothing."""
    pg_restore = shutil.which("pg_restore") or "/usr/lib/postgresql/15/bin/pg_restore"
    code, stderr = await run_tool([pg_restore, "-f", "/dev/null", str(archive)], {},
                                  lambda: {"verifying": str(archive)})
    return code == 0, stderr.strip()[-300:]


class BackupActivities:
    def __init__(self, config: ConfigSource):
        self._config = config

    def backup_dir(self, service: str) -> Path:
        database = self._config.service(service).database
        if database is None:
            raise fail(f"service {service!r} has no database configured")
        directory = Path(database.backup_dir) if database.backup_dir else Path(self._config.config.state_dir) / "backups" / service
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def manifest_path(self, service: str, backup_id: str) -> Path:
        return self.backup_dir(service) / f"{backup_id}.manifest.json"

    @activity.defn(name="backups.dump")
    async def dump(self, request: BackupRequest) -> BackupManifest:
        """pg_dump -Fc, sha256, a full read; idempotent per backup id (one archive per id)."""
        manifest_file = self.manifest_path(request.service, request.backup_id)
        if manifest_file.exists():
            existing = BackupManifest.model_validate_json(manifest_file.read_text())
            if existing.verified:
                return existing  # an earlier attempt finished
        dsn, database = service_dsn(self._config, request.service)
        if request.from_port is not None:  # a recovered cluster on loopback, same roles as the live one
            dsn = on_loopback_port(dsn, request.from_port)
        settings = self._config.service(request.service).database
        directory_format = settings.dump_format == "directory"
        archive = self.backup_dir(request.service) / f"{request.backup_id}.{'dir' if directory_format else 'dump'}"
        # each attempt writes its own partial archive; an earlier attempt's (a crashed worker's) goes
        for stale in archive.parent.glob(f"{archive.name}.partial*"):
            remove(stale)
        partial = archive.with_name(f"{archive.name}.partial{activity.info().attempt}")
        pg_dump = shutil.which("pg_dump") or "/usr/lib/postgresql/15/bin/pg_dump"
        format_args = ["-Fd", "-j", str(settings.dump_jobs)] if directory_format else ["-Fc"]
        # The manifest's row counts must describe the archive: under write load, counts read before
        # or after pg_dump's own snapshot differ from what it dumps, and every restore from such a
        # backup fails its count check. So one transaction exports a snapshot, pg_dump dumps
        # exactly that snapshot (--snapshot), and the counts are read inside it meanwhile; the
        # transaction stays open until pg_dump ends, as an exported snapshot must.
        async with await connect_to(dsn) as conn:
            await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            snapshot, taken_at, server_version = await (await conn.execute(
                "SELECT pg_export_snapshot(), clock_timestamp(), current_setting('server_version')")).fetchone()
            dumped = asyncio.ensure_future(run_tool(
                [pg_dump, *format_args, f"--snapshot={snapshot}", "--no-password", "-f", str(partial)],
                libpq_env(dsn), lambda: {"bytes": size_of(partial) if partial.exists() else 0}))
            try:
                counts = await with_heartbeats(table_counts(conn), {"counting": database})
                code, stderr = await dumped
            finally:
                if not dumped.done():
                    dumped.cancel()
                    with contextlib.suppress(BaseException):
                        await dumped
            await conn.execute("ROLLBACK")
        if code != 0:
            remove(partial)
            raise ApplicationError(f"pg_dump of {database} for {request.service} failed: {stderr.strip()[-300:]}")
        partial.replace(archive)
        ok, why = await full_read_ok(archive)
        if not ok:
            raise ApplicationError(f"the new archive {archive} does not read back: {why}")
        version = await asyncio.create_subprocess_exec(pg_dump, "--version", stdout=asyncio.subprocess.PIPE)
        manifest = BackupManifest(
            backup_id=request.backup_id, service=request.service, database=database, archive=str(archive),
            format="directory" if directory_format else "custom",
            size_bytes=size_of(archive), sha256=await hashed(archive), server_version=server_version,
            pg_dump_version=(await version.communicate())[0].decode().strip(),
            created_at=request.as_of or taken_at, tables=counts, verified=True,
        )
        write_json_atomic(manifest_file, manifest.model_dump(mode="json"))
        return manifest

    @activity.defn(name="backups.validate")
    async def validate(self, request: ArchiveRequest) -> BackupManifest:
        """Refuse anything but an intact archive this system wrote: manifest, sha256, full read."""
        directory = self.backup_dir(request.service)
        if request.archive.startswith("latest-before:"):
            request = ArchiveRequest(service=request.service, archive=await self._latest_before(request))
        # An id, never a path: the manifest and the archive it names must both lie (symlinks
        # resolved) inside the service's backup directory, whatever the input or the manifest says.
        try:
            check_backup_id(request.archive)
        except ValueError as exc:
            raise fail(f"{exc}; nothing was changed", kind="BackupInvalid") from None
        manifest_file = directory / f"{request.archive}.manifest.json"
        if not manifest_file.exists():
            raise fail(f"no manifest for {request.archive!r} in {directory}: only archives this system wrote "
                       "can be restored (see `rollback backups list`)", kind="BackupInvalid")
        manifest_file = inside(directory, manifest_file, "manifest")
        try:
            manifest = BackupManifest.model_validate_json(manifest_file.read_text())
        except ValidationError:
            raise fail(f"manifest {manifest_file} is not readable", kind="BackupInvalid") from None
        if manifest.backup_id != request.archive or manifest.service != request.service:
            raise fail(f"manifest {manifest_file} describes {manifest.backup_id} of {manifest.service}, not "
                       f"{request.archive} of {request.service}; nothing was changed", kind="BackupInvalid")
        archive = inside(directory, Path(manifest.archive), "archive")
        if not archive.exists():
            raise fail(f"archive {archive} is missing", kind="BackupInvalid")
        actual = await hashed(archive)
        if actual != manifest.sha256:
            raise fail(f"archive {archive} is corrupt: sha256 {actual[:12]}… does not match the manifest's "
                       f"{manifest.sha256[:12]}…; nothing was changed", kind="BackupInvalid")
        if request.full_read or not manifest.verified:
            ok, why = await full_read_ok(archive)
            if not ok:
                raise fail(f"archive {archive} does not read back ({why}); nothing was changed", kind="BackupInvalid")
        dsn, _ = service_dsn(self._config, request.service)
        async with await connect_to(dsn) as conn:
            live_version = (await (await conn.execute("SHOW server_version")).fetchone())[0]
        if major(live_version) < major(manifest.server_version):
            raise fail(f"archive {manifest.backup_id} comes from PostgreSQL {manifest.server_version}; the live "
                       f"server is {live_version}, which cannot load it; nothing was changed", kind="BackupInvalid")
        return manifest

    async def _latest_before(self, request: ArchiveRequest) -> str:
        try:
            moment = parse_iso_time(request.archive.split(":", 1)[1])
        except TimeFormatError as exc:
            raise fail(f"latest-before needs a time: {exc}", kind="BackupInvalid") from None
        for manifest in await self.list(ServiceRef(service=request.service)):  # newest first
            if manifest.verified and manifest.created_at <= moment:
                return manifest.backup_id
        raise fail(f"no verified backup of {request.service} was taken before {moment.isoformat()}",
                   kind="BackupInvalid")

    @activity.defn(name="backups.prune")
    async def prune(self, request: ServiceRef) -> list[str]:
        """Retention: delete backups that are neither among the newest N nor younger than D.
        The newest verified backup is never deleted, whatever the settings say."""
        database = self._config.service(request.service).database
        manifests = await self.list(request)
        newest_verified = next((m.backup_id for m in manifests if m.verified), None)
        cutoff = datetime.now(timezone.utc) - database.keep_backups_for
        deleted = []
        for index, manifest in enumerate(manifests):
            if index < database.keep_backups or manifest.created_at >= cutoff or manifest.backup_id == newest_verified:
                continue
            remove(Path(manifest.archive))
            self.manifest_path(request.service, manifest.backup_id).unlink(missing_ok=True)
            deleted.append(manifest.backup_id)
        return deleted

    @activity.defn(name="backups.list")
    async def list(self, request: ServiceRef) -> list[BackupManifest]:
        return self.manifests(request.service)

    def manifests(self, service: str) -> list[BackupManifest]:
        """The service's backups, newest first (also what `rollback backups list` prints)."""
        found = [BackupManifest.model_validate_json(p.read_text())
                 for p in self.backup_dir(service).glob("*.manifest.json")]
        return sorted(found, key=lambda m: m.created_at, reverse=True)
