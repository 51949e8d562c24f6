"""DrillWorkflow: runbook 003's quarterly rollback drill, timed against the runbook's targets.

App drill: on the service's staging copy (never production) deploy the baseline, deploy the
"problematic" version, run the real AppRollbackWorkflow as a child, time it, check the baseline
serves. Docker: images; Vercel: promote the configured deployments; git: deploy the branch's head,
then push and deploy a commit changing a marker file (the child reverts it). Database drill: restore the newest verified backup into a scratch database, check it like
a real restore would, drop it whatever happens, time it; with self-hosted `database.pitr`, also
recover a point in time (`drill.pitr_age` before the drill) on a scratch server, check it, stop and
delete it, time it against its own target. A drill that fails or misses its target
goes to the escalation channel and fails the workflow.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from workflows.app_rollback import AppRollbackWorkflow
    from workflows.base import CHANGE_RETRY, LONG_STEP, READ_RETRY, RollbackWorkflowBase, cause_message, guarded
    from workflows.config import DRILL_TARGET_DEFAULTS, DrillConfig
    from workflows.policy import qualified
    from workflows.models import (
        AppRollbackInput,
        AppRollbackResult,
        AppVersion,
        ArchiveRequest,
        BackupManifest,
        CountsRequest,
        DrillCheckRequest,
        DrillDeployRequest,
        DrillInput,
        DrillMeasure,
        DrillRecordRequest,
        DrillResult,
        EventKind,
        Phase,
        RestoreIntoRequest,
        PitrRecovery,
        PitrRequest,
        ScratchDatabaseRequest,
        ScratchServerRequest,
        ServiceContext,
        ServiceRef,
        StagingTarget,
    )

EARLIER_SHOWN = 4  # earlier drills of the same kind the report compares with


def _seconds(delta: timedelta) -> str:
    total = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
    return f"{total:.1f} s" if total < 120 else f"{total / 60:.1f} min"


def scratch_name(database: str, run_id: str) -> str:
    """<db>_drill_<first 8 hex of the run id>: unique per run, inside PostgreSQL's 63-byte limit,
    and the only shape `drills.drop_scratch` agrees to drop."""
    return f"{database[:40]}_drill_{run_id.replace('-', '')[:8]}"


@workflow.defn
class DrillWorkflow(RollbackWorkflowBase):
    rollback_type = "drill"
    # No service lock: the drill never changes production (the app drill's child rolls back the
    # staging service, the database drill only reads the live database), so a real rollback must
    # never wait behind a drill.
    locks = ()

    @workflow.run
    @guarded
    async def run(self, request: DrillInput) -> DrillResult:
        begun = workflow.now()
        self.start_run(request.service, "P3")
        self.record(EventKind.STARTED, f"{request.kind} rollback drill of {request.service}: {request.reason}",
                    actor=request.requested_by)
        context = await self.service_context(request.service)
        settings = context.config.drill or DrillConfig()
        result = DrillResult(service=request.service, outcome="failed", kind=request.kind)
        self.enter(Phase.EXECUTING)

        if request.kind in ("app", "all"):
            if request.kind == "all" and (context.config.drill is None or not settings.staging_service):
                result.skipped.append("app: no drill.staging_service configured")
            else:
                result.measures.append(await self._app_drill(request, settings))
        if request.kind in ("db", "all"):
            if context.config.database is None:
                if request.kind == "db":
                    raise ApplicationError(f"service {request.service!r} has no database configured: nothing to "
                                           "restore in a database drill", type="DrillRefused", non_retryable=True)
                result.skipped.append("db: no database configured")
            else:
                result.measures.append(await self._database_drill(request, settings, context))
                pitr = context.config.database.pitr
                if pitr is not None and workflow.patched("drill-pitr"):
                    if pitr.supabase is not None:
                        # Supabase's PITR replaces the live project's data: nothing a drill may do
                        result.skipped.append("pitr: Supabase point-in-time restore works in place only; "
                                              "not drilled")
                    else:
                        result.measures.append(await self._pitr_drill(request, settings, context, begun))
        if not result.measures:
            raise ApplicationError(f"service {request.service!r} has nothing to drill ({'; '.join(result.skipped)})",
                                   type="DrillRefused", non_retryable=True)

        self.enter(Phase.VERIFYING)
        result.earlier = await workflow.execute_activity(
            "drills.record", DrillRecordRequest(service=request.service, measures=result.measures),
            result_type=list[DrillMeasure], start_to_close_timeout=timedelta(seconds=30), retry_policy=READ_RETRY)
        result.report = self._report(request.service, result)
        failed = [m for m in result.measures if not m.passed]
        if failed:
            self.record(EventKind.ESCALATED, f"drill failed: {'; '.join(m.detail for m in failed)}")
            await self.notify(f"ESCALATION: rollback drill of {request.service} FAILED\n{result.report}",
                              key="drill-failed", escalation=True)
            self.close(result, "failed", result.report, succeeded=False)
            await self.finish_handlers()
            raise ApplicationError(f"rollback drill of {request.service} failed: "
                                   + "; ".join(f"{m.kind}: {m.detail}" for m in failed),
                                   type="DrillFailed", non_retryable=True)
        self.record(EventKind.RESOLVED, f"drill passed: {'; '.join(m.detail for m in result.measures)}")
        await self.notify(f"Rollback drill of {request.service} passed\n{result.report}", key="drill-report")
        return await self.finish(result, "verified", result.report)

    # -- the app drill ------------------------------------------------------------------------
    async def _app_drill(self, request: DrillInput, settings: DrillConfig) -> DrillMeasure:
        info = workflow.info()
        started = workflow.now()
        measure = DrillMeasure(service=request.service, kind="app", method="app", workflow_id=info.workflow_id,
                               run_id=info.run_id, started_at=started, target_seconds=0, passed=False)
        try:
            staging: StagingTarget = await workflow.execute_activity(
                "drills.staging", ServiceRef(service=request.service), result_type=StagingTarget,
                start_to_close_timeout=timedelta(seconds=30), retry_policy=READ_RETRY)
        except Exception as exc:  # noqa: BLE001 - a refusal is the drill's answer, not a crash
            # a missing or production staging target is a configuration to fix, said before anything
            # ran; a scheduled drill that cannot run is news for the people relying on it
            await self.notify(f"ESCALATION: rollback drill of {request.service} refused: {cause_message(exc)}",
                              key="drill-refused", escalation=True)
            raise ApplicationError(cause_message(exc), type="DrillRefused", non_retryable=True) from None
        measure.method = staging.provider
        measure.target_seconds = settings.targets.get(staging.provider, DRILL_TARGET_DEFAULTS["docker"]).total_seconds()
        self.record(EventKind.DECIDED, f"app drill on staging service {staging.service} ({staging.provider}): "
                    f"baseline {staging.baseline}, problem version {staging.problem}; target "
                    f"{_seconds(measure.target_seconds)}")
        try:
            baseline = await self._deploy(request, staging, staging.baseline)
            problem = await self._deploy(request, staging, staging.problem)
            self.record(EventKind.EXECUTING, f"staging {staging.service} deployed {baseline.label} then "
                        f"{problem.label} (the problematic version); rollback clock starts")
            clock = workflow.now()
            # The drill's approval: the child would otherwise wait for a person per the service's
            # policy. It is given here only because `drills.staging` checked that the target is a
            # staging copy and not production (and `drills.deploy` checked it again).
            rolled: AppRollbackResult = await workflow.execute_child_workflow(
                AppRollbackWorkflow.run,
                AppRollbackInput(service=staging.service, target=baseline.id, reason=f"rollback drill of "
                                 f"{request.service}", requested_by="drill", severity="P3",
                                 approved_by=f"drill {workflow.info().workflow_id} (staging only)"),
                id=f"{info.workflow_id}-app-rollback", result_type=AppRollbackResult)
            measure.seconds = (workflow.now() - clock).total_seconds()
            if staging.provider == "git" and workflow.patched("drill-git"):
                # a git rollback is a new revert commit: the baseline's code is back when the
                # branch's head has the baseline's tree, not its sha
                mismatch = await workflow.execute_activity(
                    "drills.check_baseline", DrillCheckRequest(service=staging.service, production=request.service,
                                                               baseline=baseline),
                    result_type=str, start_to_close_timeout=timedelta(seconds=60), retry_policy=READ_RETRY)
            else:
                serving = await workflow.execute_activity(
                    f"{staging.provider}.current", ServiceRef(service=staging.service), result_type=AppVersion,
                    start_to_close_timeout=timedelta(seconds=60), retry_policy=READ_RETRY)
                mismatch = "" if serving.id == baseline.id else f"staging serves {serving.label or serving.id}"
            if mismatch:
                measure.detail = f"after the rollback {mismatch}, not the baseline {baseline.label}"
            elif measure.seconds > measure.target_seconds:
                measure.detail = (f"app rollback took {_seconds(measure.seconds)}, over the "
                                  f"{_seconds(measure.target_seconds)} target")
            else:
                measure.passed = True
                measure.detail = (f"app rollback ({rolled.outcome}) back to {baseline.label} in "
                                  f"{_seconds(measure.seconds)} (target {_seconds(measure.target_seconds)})")
        except Exception as exc:  # noqa: BLE001 - a failed drill is reported, then the workflow fails
            measure.detail = f"app drill failed: {cause_message(exc)}"
        self.record(EventKind.VERIFIED if measure.passed else EventKind.VERIFICATION_FAILED, measure.detail)
        return measure

    async def _deploy(self, request: DrillInput, staging: StagingTarget, image: str) -> AppVersion:
        return await workflow.execute_activity(
            "drills.deploy", DrillDeployRequest(service=staging.service, production=request.service, image=image),
            result_type=AppVersion, start_to_close_timeout=timedelta(minutes=5),
            heartbeat_timeout=timedelta(seconds=10), retry_policy=CHANGE_RETRY)

    # -- the database drill -------------------------------------------------------------------
    async def _database_drill(self, request: DrillInput, settings: DrillConfig,
                              context: ServiceContext) -> DrillMeasure:
        info = workflow.info()
        measure = DrillMeasure(service=request.service, kind="db", method="database", workflow_id=info.workflow_id,
                               run_id=info.run_id, started_at=workflow.now(),
                               target_seconds=settings.targets["database"].total_seconds(), passed=False)
        manifests = await workflow.execute_activity(
            "backups.list", ServiceRef(service=request.service), result_type=list[BackupManifest],
            start_to_close_timeout=timedelta(minutes=1), retry_policy=READ_RETRY)
        newest = next((m for m in manifests if m.verified), None)
        if newest is None:
            measure.detail = f"no verified backup of {request.service} to restore"
            self.record(EventKind.VERIFICATION_FAILED, measure.detail)
            return measure
        scratch = scratch_name(newest.database, info.run_id)
        self.record(EventKind.DECIDED, f"database drill: restore the newest verified backup {newest.backup_id} into "
                    f"scratch database {scratch}; target {_seconds(measure.target_seconds)}")
        clock = workflow.now()
        try:
            source = await workflow.execute_activity(
                "backups.validate", ArchiveRequest(service=request.service, archive=newest.backup_id),
                result_type=BackupManifest, retry_policy=READ_RETRY, **LONG_STEP)
            restored = await workflow.execute_activity(
                "postgres.restore_into",
                RestoreIntoRequest(service=request.service, archive=source.archive, database=scratch,
                                   label=f"rollback drill {info.workflow_id}: scratch copy of {source.backup_id}, "
                                         "dropped when the drill ends"),
                result_type=dict[str, int], retry_policy=CHANGE_RETRY, **LONG_STEP)
            measure.row_counts = restored
            mismatches = {t: (n, restored.get(t)) for t, n in source.tables.items() if restored.get(t) != n}
            problems = [f"row counts differ from the manifest (expected, restored): {mismatches}"] if mismatches else []
            problems += await workflow.execute_activity(
                "postgres.check_database", CountsRequest(service=request.service, database=scratch),
                result_type=list[str], start_to_close_timeout=timedelta(minutes=10), retry_policy=READ_RETRY)
            measure.seconds = (workflow.now() - clock).total_seconds()
            checks = context.config.database
            if problems:
                measure.detail = f"backup {source.backup_id} restored but fails its checks: {'; '.join(problems)}"
            elif measure.seconds > measure.target_seconds:
                measure.detail = (f"restore of {source.backup_id} took {_seconds(measure.seconds)}, over the "
                                  f"{_seconds(measure.target_seconds)} target")
            else:
                measure.passed = True
                measure.detail = (f"backup {source.backup_id} restored and checked in {_seconds(measure.seconds)} "
                                  f"(target {_seconds(measure.target_seconds)}): {len(source.tables)} tables match "
                                  f"the manifest, {len(checks.critical_tables)} critical table(s), "
                                  f"{len(checks.verify_sql)} SQL check(s)")
        except Exception as exc:  # noqa: BLE001 - "cannot restore" is the drill's finding
            measure.detail = f"backup {newest.backup_id} cannot be restored: {cause_message(exc)}"
        finally:
            # the scratch copy never outlives the drill, whatever happened above (cancellation too)
            dropped = await workflow.execute_activity(
                "drills.drop_scratch", ScratchDatabaseRequest(service=request.service, database=scratch),
                result_type=bool, start_to_close_timeout=timedelta(minutes=5),
                retry_policy=RetryPolicy(maximum_attempts=10, initial_interval=timedelta(seconds=2)))
            self.record(EventKind.EXECUTING, f"scratch database {scratch} " + ("dropped" if dropped else
                                                                               "was never created"))
        self.record(EventKind.VERIFIED if measure.passed else EventKind.VERIFICATION_FAILED, measure.detail)
        return measure

    # -- the point-in-time recovery drill ---------------------------------------------------
    async def _pitr_drill(self, request: DrillInput, settings: DrillConfig, context: ServiceContext,
                          begun) -> DrillMeasure:
        """Recover the database as it was `drill.pitr_age` before the drill began, as a real
        point-in-time restore does (newest base backup before the target, archived WAL replayed,
        a scratch server on a free loopback port), check it, then stop the server and delete its
        data directory whatever happened."""
        info = workflow.info()
        measure = DrillMeasure(service=request.service, kind="pitr", method="pitr", workflow_id=info.workflow_id,
                               run_id=info.run_id, started_at=workflow.now(),
                               target_seconds=settings.targets["pitr"].total_seconds(), passed=False)
        target_time = begun - settings.pitr_age
        key = f"drill-{info.run_id}"  # the only shape `drills.discard_pitr` agrees to remove
        self.record(EventKind.DECIDED, f"point-in-time drill: recover {request.service} as of "
                    f"{target_time.isoformat()} ({_seconds(settings.pitr_age)} before the drill) on a scratch "
                    f"server; target {_seconds(measure.target_seconds)}")
        checks = context.config.database
        clock = workflow.now()
        try:
            recovery = await workflow.execute_activity(
                "pitr.recover", PitrRequest(service=request.service, target_time=target_time, key=key),
                result_type=PitrRecovery, retry_policy=CHANGE_RETRY, **LONG_STEP)
            self.record(EventKind.EXECUTING, f"recovered base backup {recovery.base_backup_id} to "
                        f"{target_time.isoformat()} on scratch server 127.0.0.1:{recovery.port}")
            on_scratch = CountsRequest(service=request.service, port=recovery.port)
            measure.row_counts = await workflow.execute_activity(
                "postgres.table_counts", on_scratch, result_type=dict[str, int],
                start_to_close_timeout=timedelta(minutes=10), retry_policy=READ_RETRY)
            # runbook 003: "check critical tables exist and have data"
            problems = [f"critical table {t} is empty" for t in checks.critical_tables
                        if measure.row_counts.get(qualified(t)) == 0]
            problems += await workflow.execute_activity(
                "postgres.check_database", on_scratch, result_type=list[str],
                start_to_close_timeout=timedelta(minutes=10), retry_policy=READ_RETRY)
            measure.seconds = (workflow.now() - clock).total_seconds()
            rows = sum(measure.row_counts.values())
            if problems:
                measure.detail = (f"point-in-time recovery to {target_time.isoformat()} fails its checks: "
                                  f"{'; '.join(problems)}")
            elif measure.seconds > measure.target_seconds:
                measure.detail = (f"point-in-time recovery to {target_time.isoformat()} took "
                                  f"{_seconds(measure.seconds)}, over the {_seconds(measure.target_seconds)} target")
            else:
                measure.passed = True
                measure.detail = (f"recovered to {target_time.isoformat()} from base backup {recovery.base_backup_id} "
                                  f"and checked in {_seconds(measure.seconds)} (target "
                                  f"{_seconds(measure.target_seconds)}): {len(measure.row_counts)} tables, {rows} rows, "
                                  f"{len(checks.critical_tables)} critical table(s) with data, "
                                  f"{len(checks.verify_sql)} SQL check(s)")
        except Exception as exc:  # noqa: BLE001 - "cannot recover to that time" is the drill's finding
            measure.detail = f"point-in-time recovery to {target_time.isoformat()} failed: {cause_message(exc)}"
        finally:
            # the scratch server and its data never outlive the drill (cancellation too)
            discarded = await workflow.execute_activity(
                "drills.discard_pitr", ScratchServerRequest(service=request.service, key=key), result_type=bool,
                start_to_close_timeout=timedelta(minutes=5),
                retry_policy=RetryPolicy(maximum_attempts=10, initial_interval=timedelta(seconds=2)))
            self.record(EventKind.EXECUTING, "scratch server stopped and its data directory removed" if discarded
                        else "no scratch server was left to remove")
        self.record(EventKind.VERIFIED if measure.passed else EventKind.VERIFICATION_FAILED, measure.detail)
        return measure

    # -- the report ---------------------------------------------------------------------------
    def _report(self, service: str, result: DrillResult) -> str:
        lines = []
        for measure in result.measures:
            took = _seconds(measure.seconds) if measure.seconds is not None else "no time"
            verdict = "PASS" if measure.passed else "FAIL"
            line = (f"{verdict} {measure.kind} drill ({measure.method}): {took}, target "
                    f"{_seconds(measure.target_seconds)}. {measure.detail}")
            before = [m for m in result.earlier if m.kind == measure.kind and m.seconds is not None][-EARLIER_SHOWN:]
            if before:
                trend = ", ".join(f"{m.started_at:%Y-%m-%d} {_seconds(m.seconds)}{'' if m.passed else ' (failed)'}"
                                  for m in before)
                if measure.seconds is not None:
                    change = measure.seconds - before[-1].seconds
                    trend += f"; {'slower' if change > 0 else 'faster'} than last time by {_seconds(abs(change))}"
                line += f" Earlier: {trend}."
            else:
                line += " First recorded drill of this kind."
            lines.append(line)
        lines += [f"skipped {s}" for s in result.skipped]
        return "\n".join(lines)
