"""Rollback drills (runbook 003): the staging target, forward deploys on it, the scratch database's
removal, and the drill records the trend is read from (in the shared state store, kind `drills`,
one document per service: every worker sees the same trend)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

from psycopg import sql
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.common import ConfigSource, fail, in_thread
from activities.docker import DeployLedger, connect, deploy, version_of
from activities.pitr import PitrActivities
from activities.postgres import connect_to, service_dsn, with_database
from workflows.models import (
    AppVersion,
    DrillDeployRequest,
    DrillMeasure,
    DrillRecordRequest,
    ScratchDatabaseRequest,
    ScratchServerRequest,
    ServiceRef,
    StagingTarget,
)

# The only databases a drill ever drops: its own scratch copies (see workflows/drill.py).
SCRATCH_NAME = re.compile(r"^[A-Za-z0-9_]+_drill_[0-9a-f]{8}$")


class DrillActivities:
    def __init__(self, config: ConfigSource):
        self._config = config

    def _staging(self, production: str) -> StagingTarget:
        config = self._config.config
        config.service(production)
        problem = config.drill_staging_problem(production)
        if problem:
            raise fail(f"{problem}; nothing was changed", kind="DrillRefused")
        drill = config.services[production].drill
        staging = config.services[drill.staging_service]
        return StagingTarget(service=drill.staging_service, provider=staging.app.provider,
                             baseline=drill.baseline_image, problem=drill.problem_image)

    @activity.defn(name="drills.staging")
    async def staging(self, request: ServiceRef) -> StagingTarget:
        """The staging target an app drill of `request.service` runs on; refused (non-retryable)
        when the config has none, or when it is production itself."""
        return self._staging(request.service)

    def _deploy(self, request: DrillDeployRequest) -> AppVersion:
        staging = self._staging(request.production)  # checked again: the config may have changed since
        if staging.service != request.service:
            raise fail(f"{request.service!r} is not the drill staging target of {request.production!r} "
                       f"({staging.service!r}); nothing was deployed", kind="DrillRefused")
        target = self._config.service(request.service).app.docker
        client = connect(target)
        ledger = DeployLedger(self._config.state, request.service)
        image_id = deploy(client, target.container, request.image, ledger)  # a no-op when already running it
        version = version_of(client, image_id)
        version.provider = "docker"
        return version

    @activity.defn(name="drills.deploy")
    async def deploy(self, request: DrillDeployRequest) -> AppVersion:
        """A plain forward deploy on the staging container (the drill's setup), heartbeating."""
        return await in_thread(self._deploy, request, details={"deploying": request.image, "to": request.service})

    @activity.defn(name="drills.drop_scratch")
    async def drop_scratch(self, request: ScratchDatabaseRequest) -> bool:
        """DROP a drill's scratch database; True when one was there. Refuses any other name, so a
        bug upstream can never drop a live database through this."""
        if not SCRATCH_NAME.match(request.database):
            raise fail(f"{request.database!r} is not a drill scratch database name; nothing was dropped",
                       kind="DrillRefused")
        dsn, live = service_dsn(self._config, request.service)
        if request.database == live:
            raise fail(f"{request.database!r} is the service's live database; nothing was dropped", kind="DrillRefused")
        async with await connect_to(with_database(dsn, "postgres")) as conn:
            exists = await (await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                               (request.database,))).fetchone()
            if exists:
                await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(request.database)))
        return bool(exists)

    @activity.defn(name="drills.discard_pitr")
    async def discard_pitr(self, request: ScratchServerRequest) -> bool:
        """Stop a drill's point-in-time recovery server and delete its working directory (data
        directory and server log); True when there was one. Only a drill's own key is accepted: a
        restore's recovered copy handed over to a person is never touched through this."""
        if not DRILL_PITR_KEY.match(request.key):
            raise fail(f"{request.key!r} is not a drill's point-in-time recovery; nothing was stopped or removed",
                       kind="DrillRefused")
        recoveries = PitrActivities(self._config)
        work = Path(self._config.config.state_dir) / "pitr" / request.key
        if not work.exists():
            return False
        data = work / "pgdata"
        await recoveries._stop(recoveries._pitr(request.service), data)
        pid_file = data / "postmaster.pid"
        if pid_file.exists() and _alive(pid_file):
            # removing the directory under a running server would leave it holding the port
            raise ApplicationError(f"the drill's recovered server in {data} did not stop; retrying")
        await asyncio.to_thread(shutil.rmtree, work)
        return True

    @activity.defn(name="drills.record")
    async def record(self, request: DrillRecordRequest) -> list[DrillMeasure]:
        """Append this run's measures (once, even when retried) and return the earlier drills of
        the service, oldest first: the trend the report shows."""
        self._config.service(request.service)
        ours = {(m.run_id, m.kind) for m in request.measures}
        before: list[dict] = []

        def append(current: list) -> list:
            before[:] = current
            recorded = {(m["run_id"], m["kind"]) for m in current}
            return current + [m.model_dump(mode="json") for m in request.measures
                              if (m.run_id, m.kind) not in recorded]

        await self._config.state.aupdate(DRILLS_KIND, request.service, append, [])
        return [m for m in _measures(before) if (m.run_id, m.kind) not in ours]


DRILLS_KIND = "drills"  # state store kind; key: the service
DRILL_PITR_KEY = re.compile(r"^drill-[0-9a-f-]{8,}$")  # drill-<run id>, see workflows/drill.py


def _alive(pid_file: Path) -> bool:
    """Whether the server process a postmaster.pid names still runs (the file outlives a crash)."""
    try:
        os.kill(int(pid_file.read_text().split()[0]), 0)
    except (ValueError, IndexError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _measures(documents: list) -> list[DrillMeasure]:
    found = []
    for document in documents:
        try:
            found.append(DrillMeasure.model_validate(document))
        except ValueError:
            continue  # a record an older version wrote differently; the rest still count
    return found


def drill_records(store, service: str) -> list[DrillMeasure]:
    """A service's drill records from the state store, oldest first (what `rollback drill list` prints)."""
    return _measures(store.get(DRILLS_KIND, service, []))
