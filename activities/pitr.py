"""Point-in-time recovery of a self-hosted PostgreSQL: base backups with pg_basebackup (verified
with pg_verifybackup) and recovery of one, with the archived WAL and `recovery_target_time`,
into a new data directory started on another loopback port. The live cluster is never touched.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shlex
import shutil
import socket
import time
from datetime import datetime, timezone
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.backups import run_tool
from activities.common import HEARTBEAT_SECONDS, ConfigSource, fail, inside, with_heartbeats, write_json_atomic
from activities.postgres import connect_to, libpq_env, on_loopback_port, service_dsn, with_database
from workflows.config import PitrConfig
from workflows.models import BaseBackup, PitrRecovery, PitrRequest, ServiceRef


_PATH = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tree_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class PitrActivities:
    def __init__(self, config: ConfigSource):
        self._config = config

    def _pitr(self, service: str) -> PitrConfig:
        database = self._config.service(service).database
        if database is None or database.pitr is None:
            raise fail(f"service {service!r} has no database.pitr configured (base_backup_dir, wal_archive_dir)",
                       kind="ConfigError")
        return database.pitr

    def _run_as(self, pitr: PitrConfig) -> list[str]:
        user = pitr.run_as or ("postgres" if os.geteuid() == 0 else None)
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        return [runuser, "-u", user, "--"] if user and os.geteuid() == 0 else []

    def _manifests(self, pitr: PitrConfig) -> list[BaseBackup]:
        found = [BaseBackup.model_validate_json(p.read_text()) for p in Path(pitr.base_backup_dir).glob("*.json")]
        return sorted((b for b in found if b.verified), key=lambda b: b.finished_at, reverse=True)

    @activity.defn(name="pitr.base_backup")
    async def base_backup(self, request: ServiceRef) -> BaseBackup:
        """pg_basebackup (plain format, WAL streamed alongside), then pg_verifybackup."""
        pitr = self._pitr(request.service)
        dsn, _ = service_dsn(self._config, request.service)
        # The id comes from the run and the step's first scheduling, not the clock: a retry after a
        # crash has the same id, so it finds (and replaces) its own half copy or its finished backup.
        info = activity.info()
        backup_id = f"{request.service}-base-{info.scheduled_time:%Y%m%d%H%M%S}-{info.workflow_run_id[-12:]}"
        target = Path(pitr.base_backup_dir) / backup_id
        manifest = target.with_name(f"{backup_id}.json")
        if manifest.exists():
            return BaseBackup.model_validate_json(manifest.read_text())  # an earlier attempt finished
        stamp = datetime.now(timezone.utc)
        shutil.rmtree(target, ignore_errors=True)  # a crashed attempt's half copy
        target.parent.mkdir(parents=True, exist_ok=True)
        async with await connect_to(dsn) as conn:
            version = (await (await conn.execute("SHOW server_version")).fetchone())[0]
        code, stderr = await run_tool(
            [f"{pitr.bin_dir}/pg_basebackup", "-D", str(target), "-Fp", "-X", "stream", "-c", "fast",
             "--no-password"], libpq_env(dsn), lambda: {"bytes": _tree_size(target) if target.exists() else 0})
        if code != 0:
            shutil.rmtree(target, ignore_errors=True)
            raise ApplicationError(f"pg_basebackup for {request.service} failed: {stderr.strip()[-300:]}")
        code, stderr = await run_tool([f"{pitr.bin_dir}/pg_verifybackup", str(target)], {},
                                      lambda: {"verifying": backup_id})
        if code != 0:
            raise ApplicationError(f"base backup {backup_id} does not verify: {stderr.strip()[-300:]}")
        backup = BaseBackup(backup_id=backup_id, service=request.service, path=str(target), started_at=stamp,
                            finished_at=datetime.now(timezone.utc), server_version=version,
                            size_bytes=_tree_size(target), verified=True)
        write_json_atomic(manifest, backup.model_dump(mode="json"))
        return backup

    @activity.defn(name="pitr.recover")
    async def recover(self, request: PitrRequest) -> PitrRecovery:
        """Copy the newest base backup finished before the target into a new data directory, replay
        archived WAL up to the target time, promote, and leave it running on a free loopback port."""
        pitr = self._pitr(request.service)
        dsn, _ = service_dsn(self._config, request.service)
        base = next((b for b in self._manifests(pitr) if b.finished_at < request.target_time), None)
        if base is None:
            raise fail(f"no verified base backup of {request.service} finished before {request.target_time.isoformat()}: "
                       f"take one with `rollback backup {request.service} --base`", kind="BackupInvalid")
        data = self._config.state_path("pitr", request.key, "pgdata")
        await self._stop(pitr, data)  # an earlier attempt's server
        shutil.rmtree(data, ignore_errors=True)
        data.parent.mkdir(parents=True, exist_ok=True)
        # the base backup's manifest names its path: only one inside base_backup_dir is used
        source = inside(Path(pitr.base_backup_dir), Path(base.path), "base backup")
        await with_heartbeats(asyncio.to_thread(shutil.copytree, source, data), {"copying": base.backup_id})
        port = _free_port()
        (data / "recovery.signal").write_text("")
        with (data / "postgresql.auto.conf").open("a") as conf:
            conf.write(f"\n# rollback: point-in-time recovery of {request.service}\n"
                       f"restore_command = 'cp {pitr.wal_archive_dir}/%f %p'\n"
                       f"recovery_target_time = '{request.target_time.isoformat()}'\n"
                       "recovery_target_action = 'promote'\n"
                       f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{data}'\n"
                       "archive_mode = off\n")
        os.chmod(data, 0o700)
        run_as = self._run_as(pitr)
        if run_as:
            def hand_over() -> None:  # the server writes its log beside the data
                for path in [data.parent, data, *data.rglob("*")]:
                    shutil.chown(path, run_as[2], run_as[2])

            await with_heartbeats(asyncio.to_thread(hand_over), {"chown": str(data)})
        log = data.parent / "recovery.log"
        timeout = int(pitr.recovery_timeout.total_seconds())
        # -w: returns once the server accepts connections, or fails if recovery cannot reach a
        # consistent state (a missing WAL segment, a target before the base backup)
        code, stderr = await run_tool([*run_as, f"{pitr.bin_dir}/pg_ctl", "-D", str(data), "-l", str(log), "-w",
                                       "-t", str(timeout), "start"], _PATH, lambda: {"recovering": str(data)})
        if code != 0:
            raise fail(f"recovery of {request.service} to {request.target_time} failed: {_log_tail(log)} "
                       f"({stderr.strip()[-200:]})", kind="RecoveryFailed")
        recovered = on_loopback_port(dsn, port)
        deadline = time.monotonic() + timeout
        while True:  # replaying WAL; promoted (out of recovery) once it reached the target
            if not (data / "postmaster.pid").exists() or time.monotonic() > deadline:
                await self._stop(pitr, data)
                raise fail(f"recovery of {request.service} to {request.target_time} failed: {_log_tail(log)}",
                           kind="RecoveryFailed")
            try:
                async with await connect_to(with_database(recovered, "postgres")) as conn:
                    if not (await (await conn.execute("SELECT pg_is_in_recovery()")).fetchone())[0]:
                        break
            except ApplicationError:
                pass  # restarting between recovery and promotion
            activity.heartbeat({"recovering": str(data)})
            await asyncio.sleep(min(1.0, HEARTBEAT_SECONDS))
        parts = {k: v for k, v in conninfo_to_dict(recovered).items() if k != "password"}
        return PitrRecovery(service=request.service, base_backup_id=base.backup_id, data_dir=str(data), port=port,
                            dsn=make_conninfo(**parts), target_time=request.target_time,
                            stop_hint=self._stop_hint(pitr, data))

    def _stop_hint(self, pitr: PitrConfig, data: Path) -> str:
        """The stop command that works for the worker's OS user: as root, through runuser."""
        command = shlex.join([*self._run_as(pitr), f"{pitr.bin_dir}/pg_ctl", "-D", str(data), "-m", "fast", "stop"])
        return f"`{command}` as {pwd.getpwuid(os.geteuid()).pw_name}"

    async def _stop(self, pitr: PitrConfig, data: Path) -> None:
        if (data / "postmaster.pid").exists():
            await run_tool([*self._run_as(pitr), f"{pitr.bin_dir}/pg_ctl", "-D", str(data), "-m", "fast", "-w",
                            "stop"], _PATH, lambda: {"stopping": str(data)})

    @activity.defn(name="pitr.discard")
    async def discard(self, request: PitrRecovery) -> None:
        """Stop the recovered server and delete its data directory (its data was dumped)."""
        pitr = self._pitr(request.service)
        data = Path(request.data_dir)
        await self._stop(pitr, data)
        shutil.rmtree(data.parent, ignore_errors=True)


def _log_tail(log: Path) -> str:
    lines = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    # the reason (e.g. "FATAL: recovery ended before configured recovery target was reached") comes
    # a few lines before the shutdown messages that end the log
    reasons = [line for line in lines[:-4] if "FATAL:" in line or "PANIC:" in line][-2:]
    return " / ".join(reasons + lines[-4:]) or "no server log"
