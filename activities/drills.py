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

from activities.common import ConfigSource, fail, in_thread, with_heartbeats
from activities.docker import DeployLedger, connect, deploy, version_of
from activities.git import GitActivities, GitError, git
from activities.pitr import PitrActivities
from activities.vercel import VercelActivities, as_version
from activities.postgres import connect_to, service_dsn, with_database
from workflows.models import (
    AppVersion,
    DrillCheckRequest,
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
        app = config.services[drill.staging_service].app
        if app.provider == "vercel":
            baseline, problem_version = drill.baseline_deployment, drill.problem_deployment
        elif app.provider == "git":
            # the branch's head when the drill starts is the baseline; the problem is a commit on it
            baseline, problem_version = f"head of {app.git.branch}", f"a commit changing {drill.problem_file}"
        else:
            baseline, problem_version = drill.baseline_image, drill.problem_image
        return StagingTarget(service=drill.staging_service, provider=app.provider, baseline=baseline,
                             problem=problem_version)

    @activity.defn(name="drills.staging")
    async def staging(self, request: ServiceRef) -> StagingTarget:
        """The staging target an app drill of `request.service` runs on; refused (non-retryable)
        when the config has none, or when it is production itself."""
        return self._staging(request.service)

    def _checked(self, request: DrillDeployRequest) -> StagingTarget:
        staging = self._staging(request.production)  # checked again: the config may have changed since
        if staging.service != request.service:
            raise fail(f"{request.service!r} is not the drill staging target of {request.production!r} "
                       f"({staging.service!r}); nothing was deployed", kind="DrillRefused")
        if request.image not in (staging.baseline, staging.problem):
            raise fail(f"{request.image!r} is neither the drill's baseline nor its problem version; nothing was "
                       "deployed", kind="DrillRefused")
        return staging

    def _deploy_docker(self, request: DrillDeployRequest) -> AppVersion:
        target = self._config.service(request.service).app.docker
        client = connect(target)
        ledger = DeployLedger(self._config.state, request.service)
        image_id = deploy(client, target.container, request.image, ledger)  # a no-op when already running it
        version = version_of(client, image_id)
        version.provider = "docker"
        return version

    async def _deploy_vercel(self, request: DrillDeployRequest) -> AppVersion:
        """`vercel promote`: the deployment serves the staging project's production domains (a
        promote also ends a rolled-back state left by the previous drill)."""
        vercel = VercelActivities(self._config)
        async with vercel._api(request.service) as api:
            deployment = await api.deployment(request.image)
            uid = deployment.get("uid") or deployment["id"]
            if deployment.get("readyState") != "READY" or deployment.get("target") != "production":
                raise fail(f"drill deployment {request.image} of {api.target.project} is "
                           f"{deployment.get('readyState')} with target {deployment.get('target')}; a drill promotes "
                           "READY production deployments only; nothing was deployed", kind="DrillRefused")
            await vercel._switch(api, "promote", uid, f"rollback drill of {request.production}")
            return as_version(deployment, api.target)

    async def _deploy_git(self, request: DrillDeployRequest, staging: StagingTarget) -> AppVersion:
        """Baseline: deploy the branch's head. Problem: commit the marker file on top of it, push,
        deploy. A retry finds its commit by the Drill-Key trailer and its deploy in the state store."""
        repo = GitActivities(self._config)
        target, path = await repo._worktree(request.service)
        key = f"drill:{activity.info().workflow_run_id}"
        if request.image == staging.problem:
            if f"{DRILL_KEY_TRAILER}: {key}" not in await git("log", "-1", "--format=%B", cwd=path):
                marker = self._config.service(request.production).drill.problem_file
                (path / marker).parent.mkdir(parents=True, exist_ok=True)
                (path / marker).write_text(f"rollback drill {activity.info().workflow_id}: the known benign "
                                           "problem version; the drill's rollback reverts it\n")
                try:
                    await git("add", "--", marker, cwd=path)
                    await git("commit", "--quiet", "-m", f"Rollback drill: known benign problem version\n\n"
                              f"Drill of {request.production}; the rollback under test reverts this commit.\n\n"
                              f"{DRILL_KEY_TRAILER}: {key}", cwd=path)
                    await git("push", "--quiet", "origin", f"HEAD:{target.branch}", cwd=path)
                except GitError as exc:
                    raise ApplicationError(f"the drill's problem commit could not be pushed to {target.branch} of "
                                           f"{target.repo}: {exc}") from None
            step = "problem"
        else:
            step = "baseline"
            head_message = await git("log", "-1", "--format=%B", cwd=path)
            if f"\n{DRILL_KEY_TRAILER}: " in f"\n{head_message}" and f"{DRILL_KEY_TRAILER}: {key}" not in head_message:
                # an earlier drill's problem version still serving is no baseline to rehearse from
                raise fail(f"the head of {target.branch} of {target.repo} is an earlier drill's problem commit "
                           "(its rollback did not happen): revert it on the staging branch first; nothing was "
                           "deployed", kind="DrillRefused")
        sha = await git("rev-parse", "HEAD", cwd=path)
        await repo._trigger_deploy(request.service, sha, f"{key}:{step}")
        return await repo._version(path, sha, target)

    @activity.defn(name="drills.deploy")
    async def deploy(self, request: DrillDeployRequest) -> AppVersion:
        """A plain forward deploy on the staging target (the drill's setup), heartbeating."""
        staging = self._checked(request)
        details = {"deploying": request.image, "to": request.service}
        if staging.provider == "vercel":
            return await with_heartbeats(self._deploy_vercel(request), details)
        if staging.provider == "git":
            return await with_heartbeats(self._deploy_git(request, staging), details)
        return await in_thread(self._deploy_docker, request, details=details)

    @activity.defn(name="drills.check_baseline")
    async def check_baseline(self, request: DrillCheckRequest) -> str:
        """git: whether the staging branch's head has the baseline's tree (a rollback is a new
        revert commit, so the sha differs while the code is the same); '' when it does, else what
        the head is."""
        repo = GitActivities(self._config)
        target, path = await repo._worktree(request.service)
        found = await git("rev-parse", "HEAD", "HEAD^{tree}", f"{request.baseline.id}^{{tree}}", cwd=path)
        sha, tree, baseline_tree = found.split()
        if tree == baseline_tree:
            return ""
        changed = await git("diff", "--name-only", request.baseline.id, sha, cwd=path)
        return f"the head of {target.branch} is {sha[:10]} with {', '.join(changed.split()[:5])} changed"

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
DRILL_KEY_TRAILER = "Drill-Key"  # on a git drill's problem commit: drill:<run id>
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
