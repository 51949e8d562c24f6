"""The `rollback` command line: start the system, start rollbacks, watch and decide them.

Every error a person can cause (bad config, bad arguments, no server, unknown workflow) ends in
one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from datetime import timezone
from pathlib import Path
from typing import Optional

import click
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from starter.engines import EngineError
from worker.codec import CodecError
from workflows.base import cause_message
from workflows.config import ConfigError, load_config, missing_secrets
from workflows.models import (
    AppRollbackInput,
    AppRollbackResult,
    ApprovalInput,
    IncidentStatus,
    Outcome,
    RollbackStatus,
)

@click.group(help="Durable rollback and incident response on Temporal.")
def app() -> None:
    pass


@app.group("config", help="Check the services configuration; revert a service's config files (vercel.json, ...).")
def config_app() -> None:
    pass


config_option = click.option("--config", "-c", "config", type=click.Path(path_type=Path), envvar="ROLLBACK_CONFIG",
                             default=None, help="Services config (YAML); default $ROLLBACK_CONFIG or ./rollback.yaml.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")

EXIT_FAILED = 1
EXIT_USAGE = 2


class ServiceName(click.ParamType):
    """A service the config defines: an unknown one is refused before anything starts. When the
    CLI cannot read a config (the worker may run elsewhere with its own), the worker decides."""

    name = "SERVICE"

    def convert(self, value, param, ctx):
        try:
            known = load_config().services
        except ConfigError:
            return value
        if value not in known:
            self.fail(f"unknown service {value!r}; the config defines: {', '.join(sorted(known))}", param, ctx)
        return value


SERVICE = ServiceName()


class CliError(Exception):
    """An error to print as one line, with its exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


def _run(coro):
    return asyncio.run(coro)


async def _client(role: str = "cli") -> Client:
    """A connected client, traced when an OTLP endpoint is configured (`role` names the process)."""
    from worker.settings import TemporalUnreachable, connect
    from worker.telemetry import TelemetryError, traced

    try:
        return traced(await connect(), role)
    except (TemporalUnreachable, TelemetryError) as exc:
        raise CliError(str(exc)) from None


def _task_queue() -> str:
    from worker.settings import TemporalSettings

    return TemporalSettings().task_queue


def _format_event(event) -> str:
    at = event.at.astimezone(timezone.utc).strftime("%H:%M:%S")
    actor = "" if event.actor == "workflow" else f" [{event.actor}]"
    return f"  {at}  {event.kind.value:<20}{event.message}{actor}"


async def _status(client: Client, workflow_id: str) -> RollbackStatus:
    handle = client.get_workflow_handle(workflow_id)
    try:
        return await handle.query("status", result_type=RollbackStatus)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise CliError(f"no workflow with ID {workflow_id!r} (see `rollback list`)") from None
        raise


def _result_type(workflow_type: str):
    from workflows.models import (BackupManifest, BaseBackup, CleanupResult, DrillResult, IncidentResult, MigrationRepairResult,
                                  MigrationRollbackResult, RestoreResult, VolumeManifest, VolumeRestoreResult)

    from workflows.models import ConfigRevertResult, EnvRestoreResult, KeyRotationResult

    return {"BackupWorkflow": BackupManifest, "DatabaseRestoreWorkflow": RestoreResult,
            "EnvRollbackWorkflow": EnvRestoreResult, "ConfigRevertWorkflow": ConfigRevertResult,
            "BaseBackupWorkflow": BaseBackup, "VolumeBackupWorkflow": VolumeManifest,
            "VolumeRestoreWorkflow": VolumeRestoreResult, "RestoreCleanupWorkflow": CleanupResult,
            "MigrationRollbackWorkflow": MigrationRollbackResult,
            "MigrationRepairWorkflow": MigrationRepairResult,
            "IncidentWorkflow": IncidentResult, "DrillWorkflow": DrillResult,
            "KeyRotationWorkflow": KeyRotationResult}.get(workflow_type, AppRollbackResult)


async def _follow(client: Client, workflow_id: str, as_json: bool) -> int:
    """Print timeline events as they happen until the workflow closes; exit code from the outcome."""
    await _status(client, workflow_id)  # a clear error for an unknown ID
    description = await client.get_workflow_handle(workflow_id).describe()
    handle = client.get_workflow_handle(workflow_id, result_type=_result_type(description.workflow_type))
    shown = 0
    hinted = False
    while True:
        status = await _status(client, workflow_id)
        for event in status.timeline[shown:]:
            if not as_json:
                print(_format_event(event), flush=True)
        shown = len(status.timeline)
        if status.waiting_for_approval and not hinted and not as_json:
            print(f"  -> waiting for approval: rollback approve {workflow_id} --reason '...'  "
                  f"(or rollback reject {workflow_id} --reason '...')", flush=True)
            hinted = True
        description = await handle.describe()
        if description.status != WorkflowExecutionStatus.RUNNING:
            break
        await asyncio.sleep(0.5)
    try:
        result = await handle.result()
    except WorkflowFailureError as exc:
        message = cause_message(exc)
        if as_json:
            print(json.dumps({"workflow_id": workflow_id, "outcome": "failed", "message": message}))
        else:
            print(f"FAILED: {message}")
        return EXIT_FAILED
    outcome, message = _ending(result)
    if as_json:
        print(result.model_dump_json(indent=2))
    else:
        print(f"{outcome.upper()}: {message}")
        if getattr(result, "artifact_dir", None) and outcome != "dry_run":
            print(f"  artifacts: {result.artifact_dir}")
    return 0 if outcome == "done" or Outcome.succeeded(outcome) else EXIT_FAILED


def _ending(result) -> tuple[str, str]:
    """The outcome and one readable line: a run's own message, or what a backup workflow made."""
    from workflows.models import BackupManifest, BaseBackup, RunResult, VolumeManifest

    if isinstance(result, RunResult):
        return result.outcome, result.message
    outcome = "verified" if result.verified else "unverified"
    if isinstance(result, BackupManifest):
        return outcome, (f"backup {result.backup_id} of database {result.database}: {_size(result.size_bytes)}, "
                         f"{len(result.tables)} tables, {sum(result.tables.values())} rows, "
                         f"sha256 {result.sha256[:12]}…, in {result.archive}")
    if isinstance(result, BaseBackup):
        return outcome, (f"base backup {result.backup_id}: {_size(result.size_bytes)} of PostgreSQL "
                         f"{result.server_version}, checked by pg_verifybackup, in {result.path}")
    if isinstance(result, VolumeManifest):
        return outcome, (f"backup {result.backup_id} of volume {result.volume}: {_size(result.size_bytes)}, "
                         f"{result.files} entries, sha256 {result.sha256[:12]}…, in {result.archive}")
    return "done", type(result).__name__


def _size(size_bytes: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size_bytes < 1024 or unit == "GiB":
            return f"{size_bytes:.0f} {unit}" if unit == "bytes" else f"{size_bytes:.1f} {unit}"
        size_bytes /= 1024


# ---------------------------------------------------------------------------------------------
# Starting rollbacks


RECENTLY_ROLLED_BACK = 15 * 60  # seconds: a second `rollback app` within this asks for --again


async def _recent_app_rollback(client: Client, service: str) -> str | None:
    """Why not to start: the service's last app rollback rolled it back minutes ago, so the same
    command run again (after a timeout, from a second terminal) would go one more version back."""
    from datetime import datetime

    from starter.start import app_rollback_id

    handle = client.get_workflow_handle(app_rollback_id(service), result_type=AppRollbackResult)
    try:
        described = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    if described.status != WorkflowExecutionStatus.COMPLETED or described.close_time is None:
        return None
    age = (datetime.now(timezone.utc) - described.close_time).total_seconds()
    if age > RECENTLY_ROLLED_BACK:
        return None
    previous = await handle.result()
    if previous.outcome != "rolled_back":
        return None
    return (f"{service} was rolled back {int(age // 60)} minute(s) ago, to {previous.to_version} ({handle.id}); "
            "running it again would go one more version back. Add --again to do that, or --to VERSION to "
            "name the target")


@app.command("app")
@click.argument("service", type=SERVICE)
@click.option("--to", default=None, help="Explicit target: deployment id/URL, image, commit.")
@click.option("--dry-run", is_flag=True, help="Plan only; change nothing.")
@click.option("--wait", is_flag=True, help="Show progress until the rollback ends.")
@click.option("--again", is_flag=True, help="Roll back once more although the last rollback of the service "
              "finished less than 15 minutes ago (one more version back).")
@click.option("--reason", default="manual rollback", show_default=True, help="Why; goes on the timeline.")
@json_option
def app_rollback(service: str, to: Optional[str], dry_run: bool, wait: bool, again: bool, reason: str,
                 as_json: bool) -> None:
    """Roll an application back to its last known good version."""
    from temporalio.exceptions import WorkflowAlreadyStartedError

    from starter.start import start_app_rollback

    async def main() -> int:
        client = await _client()
        if not (dry_run or to or again) and (why := await _recent_app_rollback(client, service)):
            raise CliError(why)
        request = AppRollbackInput(service=service, target=to, dry_run=dry_run, reason=reason,
                                   requested_by=os.environ.get("USER", "cli"))
        try:
            handle = await start_app_rollback(client, _task_queue(), request)
        except WorkflowAlreadyStartedError as exc:
            raise CliError(f"an app rollback of {service} is already running ({exc.workflow_id}): "
                           f"see `rollback status {exc.workflow_id}`") from None
        if not as_json:
            print(f"started {handle.id}{' (dry run)' if dry_run else ''}", flush=True)
        if wait:
            return await _follow(client, handle.id, as_json)
        if as_json:
            print(json.dumps({"workflow_id": handle.id, "run_id": handle.result_run_id}))
        else:
            print(f"follow it with: rollback status {handle.id} --follow")
        return 0

    sys.exit(_run(main()))


async def _read_through_worker(workflow_run, service: str, prefix: str, result_type):
    """Run a read-only workflow for `service` (the worker holds the secrets it needs) and return
    its result; its failure is one error line."""
    import uuid

    from workflows.models import ServiceRef

    client = await _client()
    try:
        return await client.execute_workflow(workflow_run, ServiceRef(service=service),
                                             id=f"{prefix}-{service}-{uuid.uuid4().hex[:8]}",
                                             task_queue=_task_queue(), result_type=result_type)
    except WorkflowFailureError as exc:
        raise CliError(cause_message(exc)) from None


async def _start_and_maybe_follow(workflow_run, request, workflow_id: str, wait: bool, as_json: bool) -> int:
    from temporalio.common import WorkflowIDConflictPolicy
    from temporalio.exceptions import WorkflowAlreadyStartedError

    client = await _client()
    try:
        handle = await client.start_workflow(workflow_run, request, id=workflow_id, task_queue=_task_queue(),
                                             id_conflict_policy=WorkflowIDConflictPolicy.FAIL)
    except WorkflowAlreadyStartedError:
        raise CliError(f"{workflow_id} is already running: see `rollback status {workflow_id}`") from None
    if not as_json:
        print(f"started {handle.id}", flush=True)
    if wait:
        return await _follow(client, handle.id, as_json)
    if as_json:
        print(json.dumps({"workflow_id": handle.id}))
    return 0


@app.command("backup")
@click.argument("service", type=SERVICE)
@click.option("--base", is_flag=True, help="A base backup for point-in-time recovery (pg_basebackup) instead.")
@click.option("--wait", is_flag=True, help="Show progress until the backup is verified.")
@click.option("--reason", default="manual backup", show_default=True)
@json_option
def backup(service: str, base: bool, wait: bool, reason: str, as_json: bool) -> None:
    """Take a verified backup (pg_dump, sha256, full read) of a service's database."""
    from workflows import BackupWorkflow, BaseBackupWorkflow
    from workflows.models import BackupInput

    run, name = (BaseBackupWorkflow.run, "base-backup") if base else (BackupWorkflow.run, "backup")
    sys.exit(_run(_start_and_maybe_follow(run, BackupInput(service=service, reason=reason), f"{name}-{service}",
                                          wait, as_json)))


@app.group("backups", help="Backups of a service's database.")
def backups_group() -> None:
    pass


@backups_group.command("list")
@click.argument("service", type=SERVICE)
@config_option
@json_option
def backups_list(service: str, config: Optional[Path], as_json: bool) -> None:
    """List a service's backups, newest first (read from its backup directory)."""
    from activities.backups import BackupActivities
    from activities.common import ConfigSource

    loaded = load_config(config)
    loaded.service(service)
    backups = BackupActivities(ConfigSource(config, loaded))
    _print_manifests(backups.manifests(service), f"no backups in {backups.backup_dir(service)}", as_json,
                     lambda m: f"{m.created_at:%Y-%m-%d %H:%M:%S}  {m.backup_id:<40} {m.size_bytes:>12} bytes  "
                               f"{'verified' if m.verified else 'UNVERIFIED'}  {sum(m.tables.values())} rows")
    sys.exit(0)


def _print_manifests(manifests: list, empty: str, as_json: bool, line) -> None:
    """A backup listing: JSON for scripts, else one line each (or why there are none)."""
    if as_json:
        print(json.dumps([m.model_dump(mode="json") for m in manifests], indent=2))
    elif not manifests:
        print(empty)
    for m in manifests if not as_json else []:
        print(line(m))


def _iso_time(text: str, param: click.Parameter | None = None, hint: str | None = None):
    """Any ISO 8601 time people paste, normalised to UTC (the parser activities use too)."""
    from workflows.iso_time import TimeFormatError, parse_iso_time

    try:
        return parse_iso_time(text)
    except TimeFormatError as exc:
        raise click.BadParameter(str(exc), param=param, param_hint=hint) from None


class _IsoTime(click.ParamType):
    name = "TIME"

    def convert(self, value, param, ctx):
        return _iso_time(value, param)


LATEST_BEFORE = "latest-before:"


class _RestoreGroup(click.Group):
    """`rollback restore SERVICE --from ID` restores; `rollback restore cleanup SERVICE` cleans up.

    The restore itself is a hidden subcommand that runs whenever the first word is not another
    subcommand, so usage, help and errors name `rollback restore`, the command people type
    (`--help` included: the group has none of its own and passes it on).
    """

    def resolve_command(self, ctx, args):
        if args and args[0] in self.commands:
            return super().resolve_command(ctx, args)
        return "run", self.commands["run"], args


class _UnnamedContext(click.Context):
    """A context whose command is typed without its own name (`rollback restore SERVICE`)."""

    @property
    def command_path(self) -> str:
        return self.parent.command_path if self.parent else super().command_path


class _UnnamedCommand(click.Command):
    context_class = _UnnamedContext


@app.group("restore", cls=_RestoreGroup, add_help_option=False, context_settings={"ignore_unknown_options": True},
           help="Restore a database from a backup: `rollback restore SERVICE --from BACKUP_ID`; drop what "
                "restores kept: `rollback restore cleanup SERVICE`.")
def restore_group() -> None:
    pass


@restore_group.command("cleanup")
@click.argument("service", type=SERVICE)
@click.option("--older-than", default="7d", show_default=True, help="Retention: e.g. 12h, 7d, 30d.")
@click.option("--dry-run", is_flag=True, help="List what would be dropped; drop nothing.")
@click.option("--wait", is_flag=True, help="Show progress until the cleanup ends.")
@json_option
def restore_cleanup(service: str, older_than: str, dry_run: bool, wait: bool, as_json: bool) -> None:
    """Drop the databases restores kept (<db>_before_restore_*, unswapped <db>_restore_*) once older
    than the retention period, after an approval that lists them."""
    import re
    from datetime import timedelta

    from workflows import RestoreCleanupWorkflow
    from workflows.models import CleanupInput

    match = re.fullmatch(r"(\d+)([hd])", older_than.strip())
    if not match:
        raise click.BadParameter("use a number of hours or days, e.g. 12h or 7d", param_hint="--older-than")
    age = timedelta(hours=int(match[1])) if match[2] == "h" else timedelta(days=int(match[1]))
    request = CleanupInput(service=service, older_than=age, dry_run=dry_run,
                           requested_by=os.environ.get("USER", "cli"))
    sys.exit(_run(_start_and_maybe_follow(RestoreCleanupWorkflow.run, request, f"restore-cleanup-{service}", wait,
                                          as_json)))


@restore_group.command("run", hidden=True, cls=_UnnamedCommand)
@click.argument("service", type=SERVICE)
@click.option("--from", "source", default=None,
              help="Backup id (see `rollback backups list`) or latest-before:<ISO time>.")
@click.option("--pitr", "target_time", type=_IsoTime(), default=None,
              help="Point-in-time recovery to this time: any ISO 8601 form, PostgreSQL's too (UTC unless it "
                   "says otherwise).")
@click.option("--handoff", is_flag=True, help="With --pitr: hand over the recovered copy's DSN; swap nothing.")
@click.option("--reimport", is_flag=True, help="After the swap, insert the newer rows back where they still fit.")
@click.option("--dry-run", is_flag=True, help="Validate the source only; change nothing.")
@click.option("--wait", is_flag=True, help="Show progress until the restore ends.")
@click.option("--reason", default="manual restore", show_default=True)
@json_option
def restore(service: str, source: Optional[str], target_time, handoff: bool, reimport: bool, dry_run: bool, wait: bool,
            reason: str, as_json: bool) -> None:
    """Restore a database into a new one and swap it in after approval (the old one is kept).

    `rollback restore cleanup SERVICE` drops the databases restores kept."""
    from workflows import DatabaseRestoreWorkflow
    from workflows.models import RestoreInput

    if (source is None) == (target_time is None):
        raise click.UsageError("give exactly one of --from BACKUP and --pitr TIME")
    if handoff and target_time is None:
        raise click.UsageError("--handoff goes with --pitr")
    if source and source.startswith(LATEST_BEFORE):
        _iso_time(source[len(LATEST_BEFORE):], hint="'--from'")  # a typo stops here, not in the worker
    request = RestoreInput(service=service, source=source or "pitr", target_time=target_time, pitr_handoff=handoff,
                           reimport_recent=reimport, dry_run=dry_run, reason=reason,
                           requested_by=os.environ.get("USER", "cli"))
    sys.exit(_run(_start_and_maybe_follow(DatabaseRestoreWorkflow.run, request, f"restore-{service}", wait,
                                          as_json)))


@app.group("volume", help="Docker named volumes: verified tar backups, restore into a new volume.")
def volume_group() -> None:
    pass


@volume_group.command("backup")
@click.argument("service", type=SERVICE)
@click.argument("volume")
@click.option("--wait", is_flag=True, help="Show progress until the backup is verified.")
@json_option
def volume_backup(service: str, volume: str, wait: bool, as_json: bool) -> None:
    """Tar the named VOLUME that SERVICE's container mounts, with a manifest and sha256."""
    from workflows import VolumeBackupWorkflow
    from workflows.models import VolumeInput

    sys.exit(_run(_start_and_maybe_follow(VolumeBackupWorkflow.run, VolumeInput(service=service, volume=volume),
                                          f"volume-backup-{service}-{volume}", wait, as_json)))


@volume_group.command("restore")
@click.argument("service", type=SERVICE)
@click.option("--from", "source", required=True, help="Volume backup id (see `rollback volume list`).")
@click.option("--wait", is_flag=True, help="Show progress until the restore ends.")
@json_option
def volume_restore(service: str, source: str, wait: bool, as_json: bool) -> None:
    """Fill a new volume from a backup and recreate the container on it, after approval."""
    from workflows import VolumeRestoreWorkflow
    from workflows.models import VolumeRestoreInput

    request = VolumeRestoreInput(service=service, source=source, requested_by=os.environ.get("USER", "cli"))
    sys.exit(_run(_start_and_maybe_follow(VolumeRestoreWorkflow.run, request, f"volume-restore-{service}", wait,
                                          as_json)))


@volume_group.command("list")
@click.argument("service", type=SERVICE)
@config_option
@json_option
def volume_list(service: str, config: Optional[Path], as_json: bool) -> None:
    """List a service's volume backups, newest first."""
    from activities.common import ConfigSource
    from activities.docker import DockerActivities

    loaded = load_config(config)
    if loaded.service(service).app.provider != "docker":
        raise CliError(f"service {service!r} is not a docker service; volume backups need one")
    volumes = DockerActivities(ConfigSource(config, loaded))
    _print_manifests(volumes.volume_manifests(service), f"no volume backups in {volumes.volume_dir(service)}", as_json,
                     lambda m: f"{m.created_at:%Y-%m-%d %H:%M:%S}  {m.backup_id:<44} {m.volume:<20} "
                               f"{m.size_bytes:>12} bytes  {m.files} entries")
    sys.exit(0)


@app.group("env", help="A service's deployment environment: what changed, and putting it back (values never shown).")
def env_group() -> None:
    pass


@env_group.command("diff")
@click.argument("service", type=SERVICE)
@json_option
def env_diff(service: str, as_json: bool) -> None:
    """Record the environment the serving deployment runs with and name what was added, removed
    or changed since the last good deployment. Names only, never values."""
    from workflows import EnvDiffWorkflow
    from workflows.models import EnvDiff

    async def main() -> int:
        diff = await _read_through_worker(EnvDiffWorkflow.run, service, "env-diff", EnvDiff)
        if as_json:
            print(diff.model_dump_json(indent=2))
            return 0
        now = diff.current
        health = {True: "healthy", False: "unhealthy", None: "health unknown"}[now.healthy]
        print(f"{service}: {now.label or now.deployment} ({now.deployment}), {len(now.hashes)} variables, {health}")
        if diff.base is not None:
            print(f"  last good: {diff.base.label or diff.base.deployment} ({diff.base.deployment}), recorded "
                  f"{diff.base.taken_at:%Y-%m-%d %H:%M} UTC")
        for mark, names in (("+", diff.added), ("-", diff.removed), ("~", diff.changed)):
            for name in names:
                print(f"  {mark} {name}")
        print(f"  {diff.message}")
        return 0

    sys.exit(_run(main()))


@env_group.command("restore")
@click.argument("service", type=SERVICE)
@click.option("--to", "to", default=None, metavar="DEPLOYMENT",
              help="Deployment whose environment to put back (see `rollback env diff`); default the last good one.")
@click.option("--dry-run", is_flag=True, help="Plan only; change nothing.")
@click.option("--wait", is_flag=True, help="Show progress until the restore ends.")
@click.option("--reason", default="manual environment rollback", show_default=True)
@json_option
def env_restore(service: str, to: Optional[str], dry_run: bool, wait: bool, reason: str, as_json: bool) -> None:
    """Set the variables back to a recorded deployment's values, redeploy, verify (undone on failure)."""
    from workflows import EnvRollbackWorkflow
    from workflows.models import EnvRestoreInput

    request = EnvRestoreInput(service=service, to=to, dry_run=dry_run, reason=reason,
                              requested_by=os.environ.get("USER", "cli"))
    sys.exit(_run(_start_and_maybe_follow(EnvRollbackWorkflow.run, request, f"env-restore-{service}", wait, as_json)))


@app.group("keys", help="Rotate a service's API keys (runbook 002); keys are shown by id and fingerprint only.")
def keys_group() -> None:
    pass


@keys_group.command("rotate")
@click.argument("service", type=SERVICE)
@click.option("--key", "keys", multiple=True, metavar="NAME", help="A key from the service's `keys` (repeatable); "
              "default all of them.")
@click.option("--compromised", is_flag=True, help="Revoke the old keys first (after approval), then replace them.")
@click.option("--dry-run", is_flag=True, help="Plan only; change nothing.")
@click.option("--wait", is_flag=True, help="Show progress until the rotation ends.")
@click.option("--reason", default="scheduled key rotation", show_default=True)
@json_option
def keys_rotate(service: str, keys: tuple[str, ...], compromised: bool, dry_run: bool, wait: bool, reason: str,
                as_json: bool) -> None:
    """Create (or wait for) new keys, set them and redeploy, verify, then revoke the old ones after approval."""
    from workflows import KeyRotationWorkflow
    from workflows.models import KeyRotationInput

    request = KeyRotationInput(service=service, keys=list(keys), compromised=compromised, dry_run=dry_run,
                               reason=reason, requested_by=os.environ.get("USER", "cli"))
    sys.exit(_run(_start_and_maybe_follow(KeyRotationWorkflow.run, request, f"keys-rotate-{service}", wait, as_json)))


@keys_group.command("provide")
@click.argument("workflow_id")
@click.option("--key", required=True, metavar="NAME", help="The key the run waits for.")
@click.option("--from-file", "from_file", type=click.Path(path_type=Path), default=None,
              help="A file holding the new key, readable by the worker (only its path is sent).")
@click.option("--from-env", "from_env", default=None, metavar="VAR", help="A variable of the worker holding the key.")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the key from stdin into the protected store "
              "(this machine shares the worker's state_dir); only the store reference is sent.")
@config_option
def keys_provide(workflow_id: str, key: str, from_file: Optional[Path], from_env: Optional[str], from_stdin: bool,
                 config: Optional[Path]) -> None:
    """Hand a key a person created to a waiting rotation, by reference: the value never enters history."""
    from workflows.models import KeyReference, NewKey

    if sum(bool(x) for x in (from_file, from_env, from_stdin)) != 1:
        raise click.UsageError("give exactly one of --from-file, --from-env, --stdin")

    async def main() -> int:
        client = await _client()
        status = await _status(client, workflow_id)
        if from_file:
            reference = f"file:{from_file.resolve()}"
        elif from_env:
            reference = f"env:{from_env}"
        else:
            from activities.common import ConfigSource
            from activities.envstore import EnvStore

            value = sys.stdin.read().strip()
            if not value:
                raise CliError("no key on stdin; nothing was sent")
            load_config(config)  # one-line error for a bad config before writing anything
            reference = f"store:{EnvStore(ConfigSource(config)).put(status.service, {key: value})}"
        given = KeyReference(key=key, reference=reference, provided_by=os.environ.get("USER", "cli"))
        try:
            material = await client.get_workflow_handle(workflow_id).execute_update(
                "provide_key", given, result_type=NewKey)
        except WorkflowUpdateFailedError as exc:
            raise CliError(f"key refused: {cause_message(exc)}") from None
        print(f"{key} accepted for {workflow_id}: {material.fingerprint}")
        return 0

    sys.exit(_run(main()))


@config_app.command("revert")
@click.argument("service", type=SERVICE)
@click.option("--to", "to", required=True, metavar="COMMIT", help="The last good commit.")
@click.option("--path", "paths", multiple=True, help="A file to revert (repeatable); default config_files.paths.")
@click.option("--dry-run", is_flag=True, help="Name the files that would change; change nothing.")
@click.option("--wait", is_flag=True, help="Show progress until the revert ends.")
@click.option("--reason", default="manual configuration rollback", show_default=True)
@json_option
def config_revert(service: str, to: str, paths: tuple[str, ...], dry_run: bool, wait: bool, reason: str,
                  as_json: bool) -> None:
    """Revert a service's config files to COMMIT with one commit, deploy, verify (undone on failure)."""
    from workflows import ConfigRevertWorkflow
    from workflows.models import ConfigRevertInput

    request = ConfigRevertInput(service=service, to=to, paths=list(paths), dry_run=dry_run, reason=reason,
                                requested_by=os.environ.get("USER", "cli"))
    sys.exit(_run(_start_and_maybe_follow(ConfigRevertWorkflow.run, request, f"config-revert-{service}", wait,
                                          as_json)))


@app.command("migration")
@click.argument("service", type=SERVICE)
@click.option("--to", "target", required=True,
              help="A version, -N to go back N migrations, 0 for none, or last-stable.")
@click.option("--dry-run", is_flag=True, help="Plan and count the data at risk; change nothing.")
@click.option("--wait", is_flag=True, help="Show progress until the rollback ends.")
@click.option("--reason", default="manual migration rollback", show_default=True)
@json_option
def migration(service: str, target: str, dry_run: bool, wait: bool, reason: str, as_json: bool) -> None:
    """Roll a service's database migrations back: emergency backup, kill switches, down scripts."""
    from workflows import MigrationRollbackWorkflow
    from workflows.migration import migration_rollback_id
    from workflows.models import MigrationRollbackInput

    request = MigrationRollbackInput(service=service, target=target, dry_run=dry_run, reason=reason,
                                     requested_by=os.environ.get("USER", "cli"))
    sys.exit(_run(_start_and_maybe_follow(MigrationRollbackWorkflow.run, request, migration_rollback_id(service),
                                          wait, as_json)))


@app.group("migrations", help="A service's migration state.")
def migrations_group() -> None:
    pass


@migrations_group.command("status")
@click.argument("service", type=SERVICE)
@json_option
def migrations_status(service: str, as_json: bool) -> None:
    """Applied, pending and dirty migrations, read by the worker (which holds the DSN)."""
    from workflows import MigrationStatusWorkflow
    from workflows.models import MigrationStatus

    async def main() -> int:
        status = await _read_through_worker(MigrationStatusWorkflow.run, service, "migrations-status", MigrationStatus)
        if as_json:
            print(status.model_dump_json(indent=2))
            return 0
        state = "DIRTY" if status.dirty else "clean"
        print(f"{service}: {status.tool}, current version {status.current or 'none'} ({state}), "
              f"last stable {status.last_stable or 'none recorded'}")
        for m in status.migrations:
            marks = ("applied" if m.applied else "pending") + ("" if m.has_down else ", NO DOWN SCRIPT")
            dirty = "  <- dirty" if status.dirty and m.version == status.current else ""
            print(f"  {m.version:<24} {m.name:<32} {marks}{dirty}")
        return 0

    sys.exit(_run(main()))


@migrations_group.command("repair")
@click.argument("service", type=SERVICE)
@click.option("--version", "version", required=True, help="The version the schema really is at.")
@click.option("--wait", is_flag=True, help="Show progress until the repair ends.")
@click.option("--reason", default="repair dirty migration state", show_default=True)
@json_option
def migrations_repair(service: str, version: str, wait: bool, reason: str, as_json: bool) -> None:
    """Clear golang-migrate's dirty flag at VERSION (like `migrate force`), after approval."""
    from workflows import MigrationRepairWorkflow
    from workflows.models import MigrationRepairInput

    request = MigrationRepairInput(service=service, version=version, reason=reason,
                                   requested_by=os.environ.get("USER", "cli"))
    sys.exit(_run(_start_and_maybe_follow(MigrationRepairWorkflow.run, request, f"migration-repair-{service}",
                                          wait, as_json)))


# ---------------------------------------------------------------------------------------------
# Reading and deciding


# ---------------------------------------------------------------------------------------------
# Rollback drills (runbook 003), on Temporal Schedules


@app.group("drill", help="Rollback drills (runbook 003): on a Temporal Schedule or now.")
def drill_group() -> None:
    pass


drill_kind_option = click.option("--kind", type=click.Choice(["app", "db", "all"]), default="all", show_default=True,
                                 help="app: roll back on the staging target; db: restore the newest verified backup "
                                      "into a scratch database (and, with database.pitr, a point in time on a "
                                      "scratch server); all: every drill the config allows.")


def _check_drillable(service: str, kind: str) -> None:
    """Refuse here what the worker would refuse, when the CLI can read the config."""
    try:
        loaded = load_config()
    except ConfigError:
        return  # the worker may run elsewhere with its own config; it decides
    if service not in loaded.services:
        return
    if kind == "app":
        problem = loaded.drill_staging_problem(service)
        if problem:
            raise CliError(problem, EXIT_USAGE)
    if kind == "db" and loaded.services[service].database is None:
        raise CliError(f"service {service!r} has no database configured: nothing to restore in a database drill",
                       EXIT_USAGE)


@drill_group.command("schedule")
@click.argument("service", type=SERVICE)
@click.option("--every", required=True, help="Interval, e.g. 90d (runbook 003: quarterly), 12w, 6h.")
@drill_kind_option
def drill_schedule(service: str, every: str, kind: str) -> None:
    """Create or update the Temporal Schedule drill-SERVICE (paused state is kept)."""
    from starter.drills import parse_every, put_schedule

    try:
        interval = parse_every(every)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--every") from None
    _check_drillable(service, kind)

    async def main() -> int:
        handle, created = await put_schedule(await _client(), service, interval, kind, _task_queue())
        described = await handle.describe()
        upcoming = described.info.next_action_times
        print(f"{'created' if created else 'updated'} schedule {handle.id}: {kind} drill every {every}"
              + ("; paused" if described.schedule.state.paused else
                 f"; next run {upcoming[0]:%Y-%m-%d %H:%M} UTC" if upcoming else ""))
        return 0

    sys.exit(_run(main()))


@drill_group.command("run")
@click.argument("service", type=SERVICE)
@drill_kind_option
@json_option
def drill_run(service: str, kind: str, as_json: bool) -> None:
    """Run a drill now, wait for it and print the report (exit 1 when it fails or misses a target)."""
    from workflows import DrillWorkflow
    from workflows.models import DrillInput

    _check_drillable(service, kind)
    request = DrillInput(service=service, kind=kind, requested_by=os.environ.get("USER", "cli"),
                         reason="rollback drill started by hand")
    sys.exit(_run(_start_and_maybe_follow(DrillWorkflow.run, request, f"drill-{service}-now", True, as_json)))


@drill_group.command("list")
@config_option
@json_option
def drill_list(config: Optional[Path], as_json: bool) -> None:
    """Drill schedules (interval, paused, next run) and each service's last drill results."""
    from activities.common import ConfigSource
    from temporalio.exceptions import ApplicationError

    from activities.drills import drill_records
    from activities.state import StateUnavailable
    from starter.drills import drill_schedules
    from workflows.base import cause_message

    async def main() -> int:
        rows = await drill_schedules(await _client())
        try:
            source = ConfigSource(config, load_config(config))
            services = sorted(set(source.config.services) | {r["service"] for r in rows})
            store = source.state  # the shared state store the workers record drills in
            records = {s: drill_records(store, s)[-3:] for s in services}
        except (ConfigError, ApplicationError, StateUnavailable) as exc:
            # results live in the workers' state store; schedules still list without it
            print(f"drill results not shown: {cause_message(exc)}", file=sys.stderr)
            records = {}
        if as_json:
            print(json.dumps({"schedules": rows, "last_drills": {s: [m.model_dump(mode="json") for m in ms]
                                                                 for s, ms in records.items() if ms}}, indent=2))
            return 0
        if not rows:
            print("no drill schedules (create one: rollback drill schedule SERVICE --every 90d)")
        for row in rows:
            state = "PAUSED" if row["paused"] else f"next {row['next_run'] or '-'}"
            print(f"{row['schedule_id']:<28} {row['kind']:<4} every {row['every']:<18} {state}"
                  + (f"  last {row['last_workflow_id']}" if row["last_workflow_id"] else ""))
        for service, measures in records.items():
            for m in measures:
                took = f"{m.seconds:.1f}s" if m.seconds is not None else "-"
                print(f"  {service}: {m.started_at:%Y-%m-%d %H:%M} {m.kind:<3} {'PASS' if m.passed else 'FAIL'} "
                      f"{took} (target {m.target_seconds:.0f}s) {m.detail}")
        return 0

    sys.exit(_run(main()))


def _drill_schedule_action(service: str, action: str) -> None:
    from temporalio.service import RPCError as _RPCError

    from starter.drills import schedule_id

    async def main() -> int:
        handle = (await _client()).get_schedule_handle(schedule_id(service))
        note = f"{action} with the rollback CLI by {os.environ.get('USER', 'cli')}"
        try:
            if action == "paused":
                await handle.pause(note=note)
            elif action == "unpaused":
                await handle.unpause(note=note)
            else:
                await handle.delete()
        except _RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise CliError(f"no drill schedule {schedule_id(service)} (see `rollback drill list`)") from None
            raise
        print(f"{action} schedule {schedule_id(service)}")
        return 0

    sys.exit(_run(main()))


@drill_group.command("pause")
@click.argument("service")
def drill_pause(service: str) -> None:
    """Pause the drill schedule (also possible on the UI's Schedules page)."""
    _drill_schedule_action(service, "paused")


@drill_group.command("unpause")
@click.argument("service")
def drill_unpause(service: str) -> None:
    """Resume the drill schedule."""
    _drill_schedule_action(service, "unpaused")


@drill_group.command("delete")
@click.argument("service")
def drill_delete(service: str) -> None:
    """Delete the drill schedule (the drill records stay)."""
    _drill_schedule_action(service, "deleted")


@app.command("list")
@click.option("--service", default=None, help="Only this service.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@json_option
def list_rollbacks(service: Optional[str], limit: int, as_json: bool) -> None:
    """List recent rollbacks, newest first."""

    async def main() -> int:
        client = await _client()
        query = "RollbackType IS NOT NULL"
        if service:
            query += f" AND RollbackService = '{service.replace(chr(39), '')}'"
        rows = []
        async for execution in client.list_workflows(query, limit=limit):
            attrs = execution.search_attributes
            rows.append({
                "workflow_id": execution.id,
                "run_id": execution.run_id,
                "type": (attrs.get("RollbackType") or [""])[0],
                "service": (attrs.get("RollbackService") or [""])[0],
                "phase": (attrs.get("RollbackPhase") or [""])[0],
                "status": execution.status.name if execution.status else "",
                "started": execution.start_time.isoformat() if execution.start_time else "",
            })
        if as_json:
            print(json.dumps(rows, indent=2))
        elif not rows:
            print("no rollbacks yet")
        else:
            for row in rows:
                print(f"{row['started'][:19]}  {row['workflow_id']:<32} {row['service']:<16} "
                      f"{row['type']:<6} {row['status']:<11} {row['phase']}")
        return 0

    sys.exit(_run(main()))


@app.command("status")
@click.argument("workflow_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until it ends.")
@json_option
def status(workflow_id: str, follow: bool, as_json: bool) -> None:
    """Show a rollback's phase and timeline."""

    async def main() -> int:
        client = await _client()
        if follow:
            return await _follow(client, workflow_id, as_json)
        state = await _status(client, workflow_id)
        if as_json and state.workflow != "incident":
            print(state.model_dump_json(indent=2))
            return 0
        if state.workflow == "incident":
            state = await client.get_workflow_handle(workflow_id).query("status", result_type=IncidentStatus)
            if as_json:
                print(state.model_dump_json(indent=2))
                return 0
            _print_incident(workflow_id, state)
        else:
            print(f"{workflow_id}: {state.workflow} rollback of {state.service}, phase {state.phase.value}")
        if state.waiting_for_approval:
            print(f"  waiting for approval of: {state.waiting_for_approval}")
        for event in state.timeline:
            print(_format_event(event))
        return 0

    sys.exit(_run(main()))


DECIDED = {"approve": "approved", "reject": "rejected"}


def _decide(workflow_id: str, reason: str, approver: str | None, update: str) -> None:
    async def main() -> int:
        client = await _client()
        state = await _status(client, workflow_id)  # clear error for an unknown ID
        # the step shown by that status: if the run moves on to another one meanwhile, the decision
        # is refused rather than applied to a step nobody looked at
        handle = client.get_workflow_handle(workflow_id)
        decision = ApprovalInput(approver=approver or os.environ.get("USER", "cli"), reason=reason, channel="cli",
                                 step=state.waiting_for_approval)
        try:
            await handle.execute_update(update, decision)
        except WorkflowUpdateFailedError as exc:
            cause = getattr(exc.cause, "message", "") or ""
            if getattr(exc.cause, "type", "") == "AlreadyDecided" and \
                    f" already {DECIDED[update]} by {decision.approver} (" in cause:
                # the same decision by the same person, sent again (a retry after a timeout): done
                print(f"{workflow_id}: {state.waiting_for_approval or 'the step'} was already {DECIDED[update]} "
                      f"by you ({decision.approver})")
                return 0
            if getattr(exc.cause, "type", "") != "NotAllowed":  # the workflow records its own policy refusals
                _audit_refusal(workflow_id, update, decision, str(exc.cause or exc))
            raise CliError(f"{update} refused: {exc.cause or exc}") from None
        print(f"{DECIDED[update]} {workflow_id} as {decision.approver}")
        return 0

    sys.exit(_run(main()))


def _audit_refusal(workflow_id: str, update: str, decision: ApprovalInput, why: str) -> None:
    """A refusal the workflow could not record (its validator refused): into the audit log, when
    the config is readable here."""
    import uuid
    from datetime import datetime

    from activities.audit import append_audit, audit_path
    from workflows.models import AuditEntry

    try:
        path = audit_path(load_config())
        append_audit(path, [AuditEntry(id=str(uuid.uuid4()), at=datetime.now(timezone.utc), event="refused",
                                       workflow_id=workflow_id, actor=decision.approver, channel="cli",
                                       reason=decision.reason, detail={"decision": update, "why": why})])
    except (ConfigError, OSError):
        pass  # the refusal itself is what the user must see


@app.command("audit")
@click.option("--service", default=None, help="Only this service's entries.")
@click.option("--since", default=None, help="Only entries at or after this ISO 8601 time.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--config", type=click.Path(path_type=Path), default=None)
def audit(service: Optional[str], since: Optional[str], as_json: bool, config: Optional[Path]) -> None:
    """The audit log: starts, approvals, rejections, refusals and endings, with who and how."""
    from activities.audit import audit_path, read_audit
    from workflows.iso_time import TimeFormatError, parse_iso_time

    try:
        settings = load_config(config)
        moment = parse_iso_time(since) if since else None
    except (ConfigError, TimeFormatError) as exc:
        raise CliError(str(exc)) from None
    for entry in read_audit(audit_path(settings), service, moment):
        if as_json:
            print(entry.model_dump_json())
            continue
        what = " ".join(x for x in (entry.step and f"[{entry.step}]", entry.reason,
                                    entry.detail.get("why", "")) if x)
        print(f"{entry.at:%Y-%m-%d %H:%M:%S} {entry.event:<9} {entry.service or '-':<12} {entry.workflow_id} "
              f"by {entry.actor or '-'} via {entry.channel or '-'}{': ' + what if what else ''}")
    sys.exit(0)


@app.command("approve")
@click.argument("workflow_id")
@click.option("--reason", required=True, help="Why it is safe to proceed.")
@click.option("--as", "approver", default=None, help="Approver identity (default: $USER).")
def approve(workflow_id: str, reason: str, approver: Optional[str]) -> None:
    """Approve the step a rollback is waiting on."""
    _decide(workflow_id, reason, approver, "approve")


@app.command("reject")
@click.argument("workflow_id")
@click.option("--reason", required=True, help="Why not.")
@click.option("--as", "approver", default=None, help="Approver identity (default: $USER).")
def reject(workflow_id: str, reason: str, approver: Optional[str]) -> None:
    """Reject the step a rollback is waiting on; it ends without acting."""
    _decide(workflow_id, reason, approver, "reject")


@app.command("cancel")
@click.argument("workflow_id")
def cancel(workflow_id: str) -> None:
    """Cancel a running rollback; anything it changed is put back."""

    async def main() -> int:
        client = await _client()
        await _status(client, workflow_id)
        await client.get_workflow_handle(workflow_id).cancel()
        print(f"cancellation requested for {workflow_id}")
        return 0

    sys.exit(_run(main()))


# ---------------------------------------------------------------------------------------------
# Processes


@config_app.command("check")
@config_option
def config_check(config: Optional[Path]) -> None:
    """Validate the config and report secret variables that are not set."""
    loaded = load_config(config, require_services=True)
    problems = missing_secrets(loaded)
    for line in problems:
        print(f"warning: {line}")
    print(f"{len(loaded.services)} service(s) configured: {', '.join(sorted(loaded.services)) or 'none'}")
    sys.exit(EXIT_FAILED if problems else 0)


def load_for_worker(config: Path | None, allow_missing_secrets: bool):
    """The config, refused while a secret variable it names is unset (unless allowed)."""
    loaded = load_config(config, require_services=True)
    problems = missing_secrets(loaded)
    if problems and not allow_missing_secrets:
        raise CliError(f"{problems[0]} (and {len(problems) - 1} more)" if len(problems) > 1 else problems[0])
    return loaded


metrics_port_option = click.option(
    "--metrics-port", type=click.IntRange(1, 65535), default=None,
    help="Serve the Temporal SDK's Prometheus metrics (workers, workflows, activities) on this port.")
metrics_host_option = click.option(
    "--metrics-host", default="127.0.0.1", show_default=True,
    help="Address for --metrics-port (0.0.0.0 in a container, so Prometheus and probes reach it).")


def _serve_metrics(host: str, port: int | None) -> None:
    from worker.telemetry import TelemetryError, serve_sdk_metrics

    if port is not None:
        try:
            serve_sdk_metrics(host, port)
        except TelemetryError as exc:
            raise CliError(str(exc)) from None


@app.command("worker")
@config_option
@click.option("--allow-missing-secrets", is_flag=True, help="Start even if a secret variable is unset.")
@metrics_port_option
@metrics_host_option
@click.option("--shutdown-grace", type=click.IntRange(min=0), default=30, show_default=True,
              help="Seconds running activities get to finish after SIGTERM before they are cancelled.")
def worker(config: Optional[Path], allow_missing_secrets: bool, metrics_port: Optional[int], metrics_host: str,
           shutdown_grace: int) -> None:
    """Run the worker that executes rollback workflows (until SIGTERM)."""
    from datetime import timedelta

    from activities.common import ConfigSource
    from worker.main import run_worker

    _logging()
    load_for_worker(config, allow_missing_secrets)
    _serve_metrics(metrics_host, metrics_port)

    async def main() -> int:
        client = await _client("worker")
        await run_worker(client, ConfigSource(config), _task_queue(), shutdown_grace=timedelta(seconds=shutdown_grace))
        return 0

    sys.exit(_run(main()))


@app.command("webhook")
@config_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8088, show_default=True, type=int)
def webhook(config: Optional[Path], host: str, port: int) -> None:
    """Run the alert webhook receiver."""
    import uvicorn

    from activities.common import ConfigSource
    from starter.webhook import create_app

    _logging()
    load_config(config)

    async def main() -> int:
        client = await _client("webhook")
        server = uvicorn.Server(uvicorn.Config(create_app(client, ConfigSource(config), _task_queue()),
                                               host=host, port=port, log_level="warning"))
        await server.serve()
        return 0

    sys.exit(_run(main()))


@app.command("codec-server")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8089, show_default=True, type=int)
@click.option("--origin", "origins", multiple=True, required=True,
              help="The Temporal UI's origin allowed to call (CORS), e.g. https://temporal.example.com; repeatable.")
def codec_server(host: str, port: int, origins: tuple[str, ...]) -> None:
    """Decrypt payloads for the Temporal UI (codec server protocol; bearer token from
    $ROLLBACK_CODEC_SERVER_TOKEN, keys from $ROLLBACK_CODEC_KEYS or $ROLLBACK_CODEC_KEY_FILE)."""
    import uvicorn

    from starter.codec_server import TOKEN_ENV, create_codec_app
    from worker.codec import KEY_FILE_ENV, KEYS_ENV, EncryptionCodec, keys_from_environment

    _logging()
    token = os.environ.get(TOKEN_ENV, "")
    if len(token) < 16:
        raise CliError(f"set {TOKEN_ENV} to a random token of at least 16 characters: the UI sends it as "
                       "'Authorization: Bearer <token>' and nobody without it gets a payload decrypted")
    keys = keys_from_environment()
    if not keys:
        raise CliError(f"no key to decrypt with: set {KEYS_ENV} or {KEY_FILE_ENV} as the worker has them")
    for origin in origins:
        if not origin.startswith(("http://", "https://")) or origin.rstrip("/") != origin:
            raise CliError(f"--origin {origin!r} is not an origin like https://temporal.example.com (scheme and "
                           "host, optional port, no path or trailing slash)")
    server = uvicorn.Server(uvicorn.Config(create_codec_app(EncryptionCodec(keys), token, list(origins)),
                                           host=host, port=port, log_level="warning"))
    print(f"codec server on http://{host}:{port} for {', '.join(origins)} with key(s) "
          f"{', '.join(key_id for key_id, _ in keys)}", flush=True)
    server.run()
    sys.exit(0)


@app.command("up")
@config_option
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("var"), show_default=True,
              help="Temporal history, dockerd, state and incident artifacts (instead of the config's state_dir "
                   "and artifact_dir).")
@click.option("--demo/--no-demo", default=True, show_default=True,
              help="Start the demo target (and a private Docker engine if none answers) and run a demo rollback; "
                   "--no-demo starts no Docker engine.")
@click.option("--port", default=7233, show_default=True, type=int, help="Temporal frontend port.")
@click.option("--ui-port", default=8233, show_default=True, type=int, help="Temporal UI port.")
@click.option("--webhook-port", default=8088, show_default=True, type=int, help="Webhook receiver port.")
@click.option("--exit-after-demo", is_flag=True, help="Stop everything once the demo ends.")
@click.option("--allow-missing-secrets", is_flag=True, help="Start even if a secret variable is unset.")
@metrics_port_option
def up(config: Optional[Path], data_dir: Path, demo: bool, port: int, ui_port: int, webhook_port: int,
       exit_after_demo: bool, allow_missing_secrets: bool, metrics_port: Optional[int]) -> None:
    """Start the Temporal dev server + UI, the worker and the webhook receiver (Ctrl-C stops all).

    Prints what it started, the Docker engines and databases the services expect, and the
    `export …` line that points the CLI in other shells at this server, config and directories."""
    from starter.up import run_up

    _logging()
    logging.getLogger("temporalio").setLevel(logging.ERROR)  # expected activity failures are on the timeline
    _serve_metrics("127.0.0.1", metrics_port)
    sys.exit(run_up(config=config, data_dir=data_dir, demo=demo, port=port, ui_port=ui_port,
                    webhook_port=webhook_port, exit_after_demo=exit_after_demo,
                    allow_missing_secrets=allow_missing_secrets))


# ---------------------------------------------------------------------------------------------
# Alerts

from starter.alerts import SOURCES  # noqa: E402 - kept with the commands that use it


@app.group("alerts", help="Alert webhooks: see how a saved payload would be decided.")
def alerts_group() -> None:
    pass


@alerts_group.command("test")
@click.option("--source", type=click.Choice(SOURCES), help="Required: the endpoint the payload would be posted to.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@config_option
@json_option
def alerts_test(source: str, file: Path, config: Optional[Path], as_json: bool) -> None:
    """Parse and decide a saved payload exactly as the receiver would: no signature or timestamp
    check, nothing started. Answers "why did my alert not roll back?"."""
    from starter.alerts import Refused, parse
    from starter.routing import route_and_decide

    if source is None:  # click's own message lists the choices over several lines
        raise click.UsageError(f"Missing option '--source' (one of {', '.join(SOURCES)})")
    settings = load_config(config)
    # Sentry says in a header what a payload is; the body tells too, so a saved one needs none.
    try:
        alerts = parse(source, file.read_bytes(), {}, settings.alerts, check_timestamps=False)
    except Refused as exc:
        raise CliError(f"{file}: {exc}") from None
    except OSError as exc:
        raise CliError(f"{file}: {exc.strerror}") from None
    described = [route_and_decide(settings, alert).describe() for alert in alerts]
    if as_json:
        print(json.dumps(described, indent=2))
    else:
        for number, alert in enumerate(described, 1):
            labels = ", ".join(f'{k}="{v}"' for k, v in sorted(alert["labels"].items()))
            print(f"alert {number} of {len(described)} ({alert['status']}, fingerprint {alert['fingerprint']})")
            print(f"  service:  {alert['service'] or '(none: no configured service matches)'}")
            print(f"  labels:   {labels}")
            print(f"  severity: {alert['severity']}")
            print(f"  action:   {alert['action']}")
            print(f"  rule:     {alert['rule']}")
            if alert["note"]:
                print(f"  note:     {alert['note']}")
        if not described:
            print("no alerts in this payload")
    sys.exit(0)


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
                        stream=sys.stderr)
    logging.getLogger("temporalio").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


# ---------------------------------------------------------------------------------------------
# Incidents (runbook 001 end to end)


def _print_incident(workflow_id: str, state) -> None:
    print(f"{workflow_id}: {state.severity} incident on {state.service}, phase {state.phase.value}; {state.rule}")
    print(f"  acknowledged by: {state.acknowledged_by or 'nobody yet'}"
          + (f"; next update {state.next_update_at:%H:%M:%S} UTC" if state.next_update_at else ""))
    if state.plan is not None:
        print(f"  plan ({state.plan.kind}):")
        for number, step in enumerate(state.plan.steps, start=1):
            print(f"    {number}. {step}")
        for note in state.plan.notes:
            print(f"    note: {note}")
    for alert in state.alerts:
        print(f"  alert {alert.fingerprint} from {alert.source}: {alert.status}, seen {alert.count}x "
              f"({alert.first_seen:%H:%M:%S} .. {alert.last_seen:%H:%M:%S})")
    for child in state.children:
        print(f"  child {child.workflow:<26} {child.workflow_id:<40} {child.outcome}")


@app.command("incident")
@click.argument("service", type=SERVICE)
@click.option("--severity", type=click.Choice(["P0", "P1", "P2", "P3"], case_sensitive=False), default=None,
              help="Default: classified from --trigger (runbook 001), else P1.")
@click.option("--reason", required=True, help="What is wrong; goes into the declaration and the post-mortem.")
@click.option("--trigger", default="", help="outage, payments, data_corruption, security, degradation, ...")
@click.option("--dry-run", is_flag=True, help="Assess and plan only; tell nobody and change nothing.")
@click.option("--wait", is_flag=True, help="Show progress until the incident is resolved.")
@json_option
def incident(service: str, severity: Optional[str], reason: str, trigger: str, dry_run: bool, wait: bool,
             as_json: bool) -> None:
    """Declare an incident: classify, page, assess, stabilise, plan, roll back after one approval."""
    from temporalio.exceptions import WorkflowAlreadyStartedError

    from starter.start import start_incident
    from workflows.models import IncidentInput

    async def main() -> int:
        client = await _client()
        request = IncidentInput(service=service, severity=severity, reason=reason, trigger=trigger,
                                dry_run=dry_run, requested_by=os.environ.get("USER", "cli"))
        try:
            handle = await start_incident(client, _task_queue(), request)
        except WorkflowAlreadyStartedError as exc:
            raise CliError(f"an incident on {service} is already open ({exc.workflow_id}): see "
                           f"`rollback status {exc.workflow_id}`") from None
        if not as_json:
            print(f"started {handle.id}{' (dry run)' if dry_run else ''}", flush=True)
        if wait:
            return await _follow(client, handle.id, as_json)
        if as_json:
            print(json.dumps({"workflow_id": handle.id, "run_id": handle.result_run_id}))
        else:
            print(f"follow it with: rollback status {handle.id} --follow; acknowledge with: rollback ack {handle.id} "
                  "--as NAME")
        return 0

    sys.exit(_run(main()))


@app.group("incidents", help="Incidents (IncidentWorkflow runs).")
def incidents_group() -> None:
    pass


@incidents_group.command("list")
@click.option("--open", "only_open", is_flag=True, help="Only incidents still open.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@json_option
def incidents_list(only_open: bool, limit: int, as_json: bool) -> None:
    """Recent incidents, newest first, with severity and phase."""

    async def main() -> int:
        client = await _client()
        query = "RollbackType = 'incident'" + (" AND ExecutionStatus = 'Running'" if only_open else "")
        rows = []
        async for execution in client.list_workflows(query, limit=limit):
            attrs = execution.search_attributes
            rows.append({"workflow_id": execution.id, "run_id": execution.run_id,
                         "service": (attrs.get("RollbackService") or [""])[0],
                         "severity": (attrs.get("RollbackSeverity") or [""])[0],
                         "phase": (attrs.get("RollbackPhase") or [""])[0],
                         "status": execution.status.name if execution.status else "",
                         "started": execution.start_time.isoformat() if execution.start_time else ""})
        if as_json:
            print(json.dumps(rows, indent=2))
        elif not rows:
            print("no incidents")
        for row in rows if not as_json else []:
            print(f"{row['started'][:19]}  {row['workflow_id']:<32} {row['severity']:<3} {row['phase']:<18} "
                  f"{row['status']}")
        return 0

    sys.exit(_run(main()))


def _incident_update(workflow_id: str, update: str, argument) -> None:
    async def main() -> int:
        client = await _client()
        await _status(client, workflow_id)  # clear error for an unknown ID
        try:
            answer = await client.get_workflow_handle(workflow_id).execute_update(update, argument, result_type=str)
        except WorkflowUpdateFailedError as exc:
            raise CliError(f"{update} refused: {exc.cause or exc}") from None
        print(f"{workflow_id}: {answer}")
        return 0

    sys.exit(_run(main()))


@app.command("ack")
@click.argument("workflow_id")
@click.option("--as", "by", default=None, help="Who is on it (default: $USER).")
@click.option("--note", default="", help="Optional note for the timeline.")
def ack(workflow_id: str, by: Optional[str], note: str) -> None:
    """Acknowledge an incident: stops its escalation (and acknowledges the PagerDuty page)."""
    from workflows.models import AcknowledgeInput

    _incident_update(workflow_id, "acknowledge", AcknowledgeInput(by=by or os.environ.get("USER", "cli"), note=note))


@app.command("severity")
@click.argument("workflow_id")
@click.argument("severity", type=click.Choice(["P0", "P1", "P2", "P3"], case_sensitive=False))
@click.option("--reason", required=True)
@click.option("--as", "by", default=None, help="Who decides (default: $USER).")
def severity(workflow_id: str, severity: str, reason: str, by: Optional[str]) -> None:
    """Raise or lower an incident's severity (its response time and update cadence follow)."""
    from workflows.models import SeverityInput

    _incident_update(workflow_id, "set_severity", SeverityInput(severity=severity, reason=reason,
                                                                by=by or os.environ.get("USER", "cli")))


@app.command("resolve")
@click.argument("workflow_id")
@click.option("--reason", required=True, help="Why it is over (e.g. fixed forward, false alarm).")
@click.option("--as", "by", default=None, help="Who resolves (default: $USER).")
def resolve(workflow_id: str, reason: str, by: Optional[str]) -> None:
    """Close an incident that needs no (more) rollback: switches back, resolved, post-mortem."""
    from workflows.models import ResolveInput

    _incident_update(workflow_id, "resolve", ResolveInput(reason=reason, by=by or os.environ.get("USER", "cli")))


@app.command("assess")
@click.argument("service", type=SERVICE)
@json_option
def assess(service: str, as_json: bool) -> None:
    """Runbook 001's status-only assessment, read by the worker; changes nothing."""
    from workflows import AssessWorkflow
    from workflows.incident import describe_assessment
    from workflows.models import AssessReport

    async def main() -> int:
        report = await _read_through_worker(AssessWorkflow.run, service, "assess", AssessReport)
        if as_json:
            print(report.model_dump_json(indent=2))
            return 0
        print(describe_assessment(report))
        print(f"  health: HTTP {report.health.http_status}, status {report.health.status}, error rate "
              f"{report.health.error_rate}, answered in {report.response_ms} ms")
        for endpoint in report.endpoints:
            print(f"  endpoint {endpoint.url}: {'ok' if endpoint.ok else endpoint.problem}")
        if report.migrations:
            pending = [m.version for m in report.migrations.migrations if not m.applied]
            print(f"  migrations: {report.migrations.tool} at {report.migrations.current}"
                  f"{' (DIRTY)' if report.migrations.dirty else ''}; pending {', '.join(pending) or 'none'}")
        for table, count in report.table_counts.items():
            print(f"  table {table}: {count} rows")
        for line in report.error_lines:
            print(f"  log: {line}")
        return 0

    sys.exit(_run(main()))


def _exit_hard(code: int) -> None:
    """Exit now: a process that ran a worker can crash in interpreter teardown (PyGILState_Release)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> None:
    try:
        code = app.main(args=argv, prog_name="rollback", standalone_mode=False)
    except SystemExit as exc:
        code = exc.code
    except click.exceptions.NoArgsIsHelpError as exc:
        print(exc.ctx.get_help() if exc.ctx else exc.format_message())
        code = EXIT_USAGE
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        print(f"error: {exc.format_message()}{hint}", file=sys.stderr)
        code = EXIT_USAGE
    except click.Abort:
        print("aborted", file=sys.stderr)
        code = 130
    except (CliError, ConfigError, EngineError, CodecError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = getattr(exc, "code", EXIT_FAILED)
    except RPCError as exc:
        print(f"error: Temporal server: {exc.message}", file=sys.stderr)
        code = EXIT_FAILED
    except KeyboardInterrupt:
        code = 130
    from worker.telemetry import flush

    try:
        flush()  # buffered spans; _exit_hard skips atexit
    except Exception as exc:  # noqa: BLE001 - a collector that is down must not change the exit code
        print(f"warning: spans not sent: {exc}", file=sys.stderr)
    # The Temporal client's native runtime can crash in interpreter teardown; exit explicitly.
    _exit_hard(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
