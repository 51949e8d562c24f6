"""MigrationRollbackWorkflow (runbooks 001-003 by hand: status, emergency backup, stop
processing, down scripts, verify, start processing) and MigrationRepairWorkflow (golang-migrate's
dirty flag), plus the read-only MigrationStatusWorkflow behind `rollback migrations status`."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from workflows.base import CHANGE_RETRY, READ_RETRY, RollbackWorkflowBase, cause_message, guarded
    from workflows.models import (
        BackupInput,
        BackupManifest,
        CountsRequest,
        DataLoss,
        DataLossExportRequest,
        DownStepRequest,
        DownStepResult,
        EventKind,
        ForceVersionRequest,
        MarkStableRequest,
        MigrationPlan,
        MigrationPlanRequest,
        MigrationRepairInput,
        MigrationRepairResult,
        MigrationRollbackInput,
        MigrationRollbackResult,
        MigrationStatus,
        MigrationVerifyRequest,
        Phase,
        RestoreInput,
        RestoreResult,
        ServiceContext,
        ServiceRef,
    )
    from workflows.policy import approval_needed, row_count_problems
    from workflows.restore import BackupWorkflow, DatabaseRestoreWorkflow

QUICK = dict(start_to_close_timeout=timedelta(minutes=2), retry_policy=READ_RETRY)


def migration_rollback_id(service: str) -> str:
    """One migration rollback per service at a time: a second start is refused by this ID."""
    return f"migration-rollback-{service}"


def _version(value: str | None) -> str:
    return value if value is not None else "none (before the first migration)"


def _loss_summary(losses: list[DataLoss]) -> str:
    return "; ".join(f"{d.rows} row(s) from {d.statement.replace('_', ' ')} {d.table}"
                     f"{'.' + d.column if d.column else ''} in {d.version}" for d in losses if d.rows)


@workflow.defn
class MigrationStatusWorkflow:
    """Reads the tool's files and tracking table in the worker, where the DSN lives."""

    @workflow.run
    async def run(self, request: ServiceRef) -> MigrationStatus:
        return await workflow.execute_activity("migrations.status", request, result_type=MigrationStatus, **QUICK)


@workflow.defn
class MigrationRollbackWorkflow(RollbackWorkflowBase):
    rollback_type = "migration"
    locks = ("service", "database")

    @workflow.run
    @guarded
    async def run(self, request: MigrationRollbackInput) -> MigrationRollbackResult:
        self.start_run(request.service, "P1")
        self.approval_only_from_a_parent(request)
        self.record(EventKind.STARTED, f"migration rollback of {request.service} to {request.target}: "
                    f"{request.reason}", actor=request.requested_by, dry_run=request.dry_run)
        result = MigrationRollbackResult(service=request.service, outcome="failed")
        context = await self.service_context(request.service)
        result.artifact_dir = context.artifact_dir

        # 1. Status and plan: every check that can refuse happens here, before anything changes
        self.enter(Phase.PLANNING)
        try:
            plan = await workflow.execute_activity(
                "migrations.plan", MigrationPlanRequest(service=request.service, target=request.target),
                result_type=MigrationPlan, start_to_close_timeout=timedelta(minutes=10), retry_policy=READ_RETRY)
        except ActivityError as exc:
            self.record(EventKind.FAILED, f"refused: {cause_message(exc)}")
            raise ApplicationError(cause_message(exc), non_retryable=True) from None
        result.plan, result.version_before = plan, plan.current
        if not plan.steps:
            self.record(EventKind.RESOLVED, f"already at {_version(plan.target)}; nothing to do")
            return await self.finish(result, "nothing_to_do", f"{request.service} is already at {_version(plan.target)}")
        self.record(EventKind.PLANNED, f"{plan.tool}: {_version(plan.current)} -> {_version(plan.target)} by "
                    + ", then ".join(f"{s.version} down ({s.down_file})" for s in plan.steps),
                    steps=[s.model_dump() for s in plan.steps])

        # 2. Data-loss guard
        losing = [d for d in plan.data_loss if d.rows]
        if losing:
            self.record(EventKind.ASSESSED, f"data-loss guard: the down scripts remove {_loss_summary(losing)}",
                        rows=sum(d.rows for d in losing))
        if request.dry_run:
            self.record(EventKind.RESOLVED, "dry run: nothing was changed")
            return await self.finish(result, "dry_run", f"dry run: would roll back {len(plan.steps)} migration(s) "
                                      f"to {_version(plan.target)}")
        if losing:
            plan.data_loss = await workflow.execute_activity(
                "migrations.export_data_loss",
                DataLossExportRequest(service=request.service, plan=plan, artifact_dir=context.artifact_dir),
                result_type=list[DataLoss], start_to_close_timeout=timedelta(minutes=30), retry_policy=READ_RETRY)
            self.record(EventKind.CAPTURED, "rows the rollback removes exported to CSV: "
                        + ", ".join(d.csv for d in plan.data_loss if d.csv))

        # 3. Emergency backup (runbook 001's first step), verified by a full read
        self.enter(Phase.EXECUTING)
        backup = await workflow.execute_child_workflow(
            BackupWorkflow.run, BackupInput(service=request.service, reason="emergency backup before migration rollback"),
            id=f"{workflow.info().workflow_id}-emergency-backup", result_type=BackupManifest)
        result.emergency_backup = backup
        self.record(EventKind.CAPTURED, f"emergency backup {backup.backup_id}: {backup.size_bytes} bytes, sha256 "
                    f"{backup.sha256[:12]}…, full read OK")

        # 4. Stop processing: record what the switches say, then flip them
        result.kill_switches_before = await self.stop_processing(request.service, context.config.kill_switches)

        # 5. Approval where policy or the guard asks
        policy = context.config.policy
        if request.approved_by:  # a parent incident's approval of its plan covers this rollback
            self.record(EventKind.APPROVED, "run down migrations: approved by the parent workflow's checkpoint"
                        + (f"; data loss: {_loss_summary(losing)} (exported)" if losing else ""),
                        actor=request.approved_by)
        elif losing or approval_needed(policy.database_approval, automatic=False):
            why = f"data loss: {_loss_summary(losing)} (exported)" if losing else "policy requires approval"
            outcome = await self.ask("run down migrations", f"{_version(plan.current)} -> {_version(plan.target)}; "
                                     f"{why}", request.approval_timeout)
            if outcome:
                result.kill_switches_restored = await self.start_processing(result.service, result.kill_switches_before)
                return await self.finish(result, outcome, f"down migrations {outcome}; nothing was rolled back")

        # 6. Down migrations, one transaction each; 7. verify
        counts_before = await self._counts(request.service)
        self.live_changed = True  # from the first down step on, the schema may differ from before
        try:
            for step in plan.steps:
                done = await workflow.execute_activity(
                    "migrations.down_step", DownStepRequest(service=request.service, step=step),
                    result_type=DownStepResult, retry_policy=CHANGE_RETRY,
                    # no heartbeat timeout: one statement may run up to statement_timeout without a beat
                    start_to_close_timeout=context.config.database.statement_timeout + timedelta(minutes=2))
                result.version_after = done.version
                self.record(EventKind.ROLLED_BACK, f"{step.version} ({step.name}) rolled back; now at "
                            f"{_version(done.version)}" + (" (found already done)" if done.already_done else ""),
                            seconds=round(done.seconds, 3))
        except ActivityError as exc:
            return await self._compensate(request, result, backup, cause_message(exc), context)
        problems = await self._verify(request.service, plan, counts_before, context, request.verify_app)
        if problems:
            return await self._compensate(request, result, backup, "verification failed: " + "; ".join(problems),
                                          context)

        # 8. Start processing again, with the values recorded before
        await workflow.execute_activity("migrations.mark_stable",
                                        MarkStableRequest(service=request.service, version=plan.target), **QUICK)
        result.kill_switches_restored = await self.start_processing(result.service, result.kill_switches_before)
        self.record(EventKind.RESOLVED, f"{request.service} schema rolled back to {_version(plan.target)}")
        await self.notify(f"{request.service}: migrations rolled back to {_version(plan.target)}", key="resolved")
        return await self.finish(result, "rolled_back", f"rolled back to {_version(plan.target)}")

    async def _verify(self, service: str, plan: MigrationPlan, counts_before: dict[str, int],
                      context: ServiceContext, verify_app: bool = True) -> list[str]:
        self.enter(Phase.VERIFYING)
        problems = await workflow.execute_activity(
            "migrations.verify", MigrationVerifyRequest(service=service, target=plan.target),
            result_type=list[str], **QUICK)
        bookkeeping = [plan.tracking_table] + [s.table for s in context.config.kill_switches if s.store == "postgres"]
        problems += row_count_problems(counts_before, await self._counts(service), plan.data_loss,
                                       context.config.database.critical_tables, bookkeeping)
        if verify_app:  # a parent that rolls the broken app back next checks the app itself
            verdict = await self.verify_app(service, context.config.health)
            if not verdict.passed:
                problems.append(f"app health: {verdict.problem}")
        if problems:
            self.record(EventKind.VERIFICATION_FAILED, "; ".join(problems))
        else:
            self.record(EventKind.VERIFIED, f"tracking table at {_version(plan.target)}, row counts as expected, "
                        f"{len(context.config.database.verify_sql)} SQL check(s)"
                        + (" and app health pass" if verify_app else " pass; the parent verifies the app"))
        return problems

    async def _compensate(self, request: MigrationRollbackInput, result: MigrationRollbackResult,
                          backup: BackupManifest, problem: str, context: ServiceContext) -> MigrationRollbackResult:
        """Processing stays stopped; restoring the emergency backup waits for a person."""
        self.enter(Phase.COMPENSATING)
        self.record(EventKind.FAILED, problem)
        self.record(EventKind.COMPENSATING, f"processing stays stopped; the emergency backup {backup.backup_id} can "
                    "be restored")
        await self.notify(f"{request.service}: migration rollback failed ({problem}); processing stays stopped",
                          key="failed", escalation=True)
        decision = await self.wait_for_approval(
            "restore emergency backup", f"restore {backup.backup_id} (taken before this rollback) into a new "
            f"database and swap it in; the current database is kept", request.approval_timeout)
        manual = f"`rollback restore {request.service} --from {backup.backup_id}`"
        if decision is None or not decision.approved:
            await self.leave_processing_stopped(f"{problem}; the emergency backup was not restored")
            return await self.finish(result, "failed", f"{problem}; processing is still stopped; nothing was "
                                      f"restored: run {manual} and then restore the kill switches")
        restored = await workflow.execute_child_workflow(
            DatabaseRestoreWorkflow.run,
            RestoreInput(service=request.service, source=backup.backup_id, reason=f"compensation of "
                         f"{workflow.info().workflow_id}", requested_by=decision.approver,
                         approved_by=decision.approver),
            id=f"{workflow.info().workflow_id}-restore", result_type=RestoreResult)
        # a flags table inside the database came back with the backup's values: stop processing again
        await self.set_switches(request.service, {s.name: s.off_value for s in context.config.kill_switches})
        await self.leave_processing_stopped(f"{problem}; the emergency backup was restored and needs checking")
        self.record(EventKind.COMPENSATED, f"emergency backup restored ({restored.outcome}); the database as it "
                    f"was before is kept as {restored.kept_old_as}; processing stays stopped until someone checks "
                    "the app and restores the kill switches")
        return await self.finish(result, "compensated", f"{problem}; the emergency backup was restored; processing "
                                  "is still stopped")

    async def _counts(self, service: str) -> dict[str, int]:
        return await workflow.execute_activity(
            "postgres.table_counts", CountsRequest(service=service), result_type=dict[str, int],
            start_to_close_timeout=timedelta(minutes=10), retry_policy=READ_RETRY)


@workflow.defn
class MigrationRepairWorkflow(RollbackWorkflowBase):
    """golang-migrate's `force V`, behind an approval that shows the dirty state."""

    rollback_type = "repair"
    locks = ("service", "database")

    @workflow.run
    @guarded
    async def run(self, request: MigrationRepairInput) -> MigrationRepairResult:
        self.start_run(request.service, "P2")
        self.record(EventKind.STARTED, f"repair of {request.service}'s migration state at {request.version}: "
                    f"{request.reason}", actor=request.requested_by)
        result = MigrationRepairResult(service=request.service, outcome="failed")
        result.before = await workflow.execute_activity(
            "migrations.status", ServiceRef(service=request.service), result_type=MigrationStatus, **QUICK)
        if not result.before.dirty:
            self.record(EventKind.RESOLVED, f"not dirty (at {_version(result.before.current)}); nothing to repair")
            return await self.finish(result, "not_dirty", f"{request.service} is not dirty; nothing was changed")
        outcome = await self.ask(
            "force version", f"{result.before.tool} says {result.before.current} (dirty); set it to "
            f"{request.version}, clean. Only do this after checking the schema really is at {request.version}",
            request.approval_timeout)
        if outcome:
            return await self.finish(result, outcome, f"repair {outcome}; nothing was changed")
        try:
            result.after = await workflow.execute_activity(
                "migrations.force_version", ForceVersionRequest(service=request.service, version=request.version),
                result_type=MigrationStatus, start_to_close_timeout=timedelta(minutes=2), retry_policy=CHANGE_RETRY)
        except ActivityError as exc:
            self.record(EventKind.FAILED, cause_message(exc))
            return await self.finish(result, "failed", cause_message(exc))
        self.record(EventKind.RESOLVED, f"version set to {request.version}, dirty flag cleared")
        return await self.finish(result, "repaired", f"{request.service} is at {request.version}, clean")
