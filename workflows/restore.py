"""BackupWorkflow and DatabaseRestoreWorkflow: verified backups, restore into a new database,
approval, and an atomic swap by rename that keeps the old database."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from workflows.base import (CHANGE_RETRY, LONG_STEP, READ_RETRY, RollbackWorkflowBase, all_settled,
                                cause_message, guarded)
    from workflows.models import (
        ArchiveRequest,
        BackupInput,
        BackupManifest,
        BackupRequest,
        BaseBackup,
        CleanupInput,
        CleanupResult,
        CountsRequest,
        DropRequest,
        KeptDatabase,
        PitrRecovery,
        PitrRequest,
        PitrWindow,
        EventKind,
        Phase,
        RestoreInput,
        RestoreIntoRequest,
        RecentRowsRequest,
        ReimportRequest,
        RestoreResult,
        ServiceContext,
        ServiceRef,
        SwapRequest,
        SupabaseRestoreRequest,
        SwapResult,
    )



def _stamp() -> str:
    return workflow.now().strftime("%Y%m%d%H%M%S")


@workflow.defn
class BackupWorkflow(RollbackWorkflowBase):
    rollback_type = "backup"

    @workflow.run
    @guarded
    async def run(self, request: BackupInput) -> BackupManifest:
        # the id is unique per run, so the dump's idempotency never hands back another run's archive
        manifest = await self.backup_step(
            request.service, f"backup of {request.service}: {request.reason}", "backups.dump",
            BackupRequest(service=request.service, backup_id=f"{request.service}-{_stamp()}-"
                          f"{workflow.info().run_id[-12:]}"), BackupManifest)
        self.record(EventKind.VERIFIED, f"backup {manifest.backup_id}: {manifest.size_bytes} bytes, sha256 "
                    f"{manifest.sha256[:12]}…, full read OK", tables=manifest.tables)
        pruned = await workflow.execute_activity(
            "backups.prune", ServiceRef(service=request.service), result_type=list[str],
            start_to_close_timeout=timedelta(minutes=5), retry_policy=READ_RETRY,
        )
        if pruned:
            self.record(EventKind.DECIDED, f"retention removed {len(pruned)} old backup(s): {', '.join(pruned)}")
        return await self.done(manifest)


@workflow.defn
class BaseBackupWorkflow(RollbackWorkflowBase):
    """A base backup for point-in-time recovery (pg_basebackup, verified by pg_verifybackup)."""

    rollback_type = "backup"

    @workflow.run
    @guarded
    async def run(self, request: BackupInput) -> BaseBackup:
        backup = await self.backup_step(request.service, f"base backup of {request.service}: {request.reason}",
                                        "pitr.base_backup", ServiceRef(service=request.service), BaseBackup)
        self.record(EventKind.VERIFIED, f"base backup {backup.backup_id}: {backup.size_bytes} bytes, "
                    "pg_verifybackup OK")
        return await self.done(backup)


@workflow.defn
class DatabaseRestoreWorkflow(RollbackWorkflowBase):
    rollback_type = "restore"
    locks = ("service", "database")

    @workflow.run
    @guarded
    async def run(self, request: RestoreInput) -> RestoreResult:
        self.start_run(request.service, "P1")
        self.approval_only_from_a_parent(request)
        self.record(EventKind.STARTED, f"restore of {request.service} from {request.source}: {request.reason}",
                    actor=request.requested_by, dry_run=request.dry_run)
        result = RestoreResult(service=request.service, outcome="failed")
        context = await self.service_context(request.service)
        result.artifact_dir = context.artifact_dir
        pitr = context.config.database.pitr if context.config.database else None
        if request.source == "pitr" and pitr and pitr.supabase:
            return await self._supabase_pitr(request, result, context)

        # 0. Point in time: recover a copy of the cluster to the target time, then dump it into an
        # archive like any other, so the rest is the ordinary restore (or hand the copy over)
        archive = request.source
        if request.source == "pitr":
            archive = await self._recover_to_point_in_time(request, result)
            if archive is None:
                return await self.finish(result, "recovered", result.message)

        # 1. Validate the source before anything changes. A dry run reads the archive in full; a
        # restore checks its sha256 against the verified manifest and lets pg_restore, into a
        # database aside, be the full read (patched: runs from before keep both).
        overlap = not request.dry_run and workflow.patched("restore-overlap")
        source = await workflow.execute_activity(
            "backups.validate", ArchiveRequest(service=request.service, archive=archive, full_read=not overlap),
            result_type=BackupManifest, retry_policy=READ_RETRY, **LONG_STEP,
        )
        result.source = source
        self.record(EventKind.ASSESSED, f"source {source.backup_id} valid: sha256 matches"
                    + (" its verified manifest" if overlap else ", full read OK") + f", {len(source.tables)} tables")
        if not overlap:  # else the safety backup counts the live rows, in its dump's own snapshot
            result.counts_before = await self._live_counts(request.service)
        if request.dry_run:
            self.record(EventKind.RESOLVED, "dry run: nothing was changed")
            return await self.finish(result, "dry_run", "dry run: the source is valid; nothing was changed")

        # 2. Safety backup of what is live now (a child workflow), and at the same time
        # 3. restore into a new database: neither touches the live one, which keeps serving
        self.enter(Phase.EXECUTING)
        stamp = _stamp()
        new_database = f"{source.database}_restore_{stamp}"
        safety = asyncio.ensure_future(self._safety_backup(request, result, stamp))
        try:
            restored = await workflow.execute_activity(
                "postgres.restore_into",
                RestoreIntoRequest(service=request.service, archive=source.archive, database=new_database,
                                   label=f"rollback: restore of {source.backup_id} by {workflow.info().workflow_id}"),
                result_type=dict[str, int], retry_policy=CHANGE_RETRY, **LONG_STEP,
            )
        finally:
            await safety  # the swap never happens without the safety backup
        if overlap:
            result.counts_before = dict(result.safety_backup.tables)
        result.restored_database = new_database
        self.record(EventKind.EXECUTING, f"restored into {new_database}; live database untouched")

        # 4. Verify the new database against the manifest
        self.enter(Phase.VERIFYING)
        mismatches = {t: (n, restored.get(t)) for t, n in source.tables.items() if restored.get(t) != n}
        if mismatches:
            self.record(EventKind.VERIFICATION_FAILED, f"row counts differ from the backup: {mismatches}")
            raise ApplicationError(f"restored database {new_database} does not match backup {source.backup_id}: "
                                   f"{mismatches}; the live database was not touched", non_retryable=True)
        checking = workflow.execute_activity(
            "postgres.check_database", CountsRequest(service=request.service, database=new_database),
            result_type=list[str], start_to_close_timeout=timedelta(minutes=10), retry_policy=READ_RETRY)
        exporting = None
        if overlap:  # the live rows newer than the backup are exported meanwhile (two reads, no order)
            exporting = asyncio.ensure_future(self._export_recent_rows(request, result, source.created_at, context))
            problems, _ = await all_settled(checking, exporting)
        else:
            problems = await checking
        if problems:
            self.record(EventKind.VERIFICATION_FAILED, "; ".join(problems))
            raise ApplicationError(f"restored database {new_database} fails its checks: {'; '.join(problems)}; the "
                                   "live database was not touched", non_retryable=True)
        checks = context.config.database
        self.record(EventKind.VERIFIED, f"all {len(source.tables)} tables match the backup's row counts; "
                    f"{len(checks.critical_tables)} critical table(s) present, {len(checks.verify_sql)} SQL check(s) pass")

        # 6. Recent data report: what the live database has that the backup does not
        recent = exporting.result() if exporting else await self._export_recent_rows(
            request, result, source.created_at, context)

        # 5. Approval, showing what the swap would change and drop
        changes = {t: f"{result.counts_before.get(t)} -> {n}" for t, n in restored.items()
                   if result.counts_before.get(t) != n}
        outcome = await self._approval(request, "database swap", f"swap {new_database} in for {source.database}; "
                                       f"row count changes: {changes or 'none'}; rows newer than the backup "
                                       f"(exported): {recent or 'none'}")
        if outcome:
            return await self.finish(result, outcome, f"swap {outcome}; {new_database} is kept for inspection")

        # 7. Kill switches off (the app's maintenance mode), then the atomic swap by rename; the old
        # database is kept
        self.enter(Phase.EXECUTING)
        switches = context.config.kill_switches
        result.kill_switches_before = await self.stop_processing(request.service, switches)
        self.live_changed = True  # from here a failure may have left the restored database in place
        try:
            swap = await workflow.execute_activity(
                "postgres.swap", SwapRequest(service=request.service, new_database=new_database,
                                             keep_old_as=f"{source.database}_before_restore_{stamp}"),
                result_type=SwapResult, start_to_close_timeout=timedelta(minutes=5),
                retry_policy=RetryPolicy(maximum_attempts=3),
            )
        except ActivityError:
            self.live_changed = False  # a failed swap leaves the original database under its name
            await self.start_processing(request.service, result.kill_switches_before)
            raise
        result.kept_old_as, result.swap_downtime_seconds = swap.kept_old_as, swap.downtime_seconds
        if switches and workflow.patched("switches-off-right-after-swap"):
            # a flags table inside the database came back with the backup's values: processing
            # stays stopped through the re-import and the checks, not only from _resume on
            await self.set_switches(request.service, self.off_values)
        self.record(EventKind.ROLLED_BACK, f"{new_database} is now {swap.live}; the previous database is kept as "
                    f"{swap.kept_old_as}; {swap.terminated_sessions} sessions terminated; swap took "
                    f"{swap.downtime_seconds * 1000:.0f} ms")
        if request.reimport_recent and recent:
            result.reimported = await workflow.execute_activity(
                "postgres.reimport_rows", ReimportRequest(service=request.service, artifact_dir=context.artifact_dir,
                                                          tables=recent),
                result_type=dict[str, dict[str, int | str]], start_to_close_timeout=timedelta(minutes=30),
                retry_policy=RetryPolicy(maximum_attempts=1))  # not blindly twice: a rerun skips what is in
            self.record(EventKind.EXECUTING, "newer rows re-imported: " + "; ".join(
                f"{t}: {r['imported']} imported, {r['rejected']} rejected{' (' + str(r['reason']) + ')' if r['reason'] else ''}"
                for t, r in result.reimported.items()))
        if overlap and not result.reimported:
            result.counts_after = dict(restored)  # the swapped-in database, counted after its restore
        else:
            result.counts_after = await self._live_counts(request.service)
        return await self._resume(request, result, context, f"restored from {source.backup_id}",
                                  f"the previous database is kept as {swap.kept_old_as}")

    async def _safety_backup(self, request: RestoreInput, result: RestoreResult, stamp: str) -> None:
        result.safety_backup = await workflow.execute_child_workflow(
            BackupWorkflow.run, BackupInput(service=request.service, reason=f"safety backup before restore {stamp}"),
            id=f"{workflow.info().workflow_id}-safety-backup", result_type=BackupManifest,
        )
        self.record(EventKind.CAPTURED, f"safety backup {result.safety_backup.backup_id} taken and verified")

    async def _export_recent_rows(self, request: RestoreInput, result: RestoreResult, since,
                                  context: ServiceContext) -> dict[str, int]:
        """Runbook 003's "minimizing data loss": the live rows the restore would drop, as CSV."""
        recent = await workflow.execute_activity(
            "postgres.recent_rows",
            RecentRowsRequest(service=request.service, since=since, artifact_dir=context.artifact_dir),
            result_type=dict[str, int], start_to_close_timeout=timedelta(minutes=30), retry_policy=READ_RETRY,
        )
        result.recent_rows = recent
        if recent:
            self.record(EventKind.CAPTURED, f"rows newer than the restore point exported to "
                        f"{context.artifact_dir}/recent-rows: {recent}")
        return recent

    async def _approval(self, request: RestoreInput, step: str, summary: str) -> str | None:
        """None when approved (here, or by a parent workflow's checkpoint); else the outcome."""
        if request.approved_by:
            self.record(EventKind.APPROVED, f"{step}: approved by the parent workflow's checkpoint; {summary}",
                        actor=request.approved_by)
            return None
        needed = self.approvers.min_approvers_p0_restore if request.severity == "P0" and self.approvers else 1
        return await self.ask(step, summary, request.approval_timeout, approvers_needed=needed)

    async def _resume(self, request: RestoreInput, result: RestoreResult, context: ServiceContext, done: str,
                      kept: str) -> RestoreResult:
        """8. The app on the restored database; switches stay off until it is healthy. A flags table
        inside the database came back with the backup's values, so they are set off again first."""
        switches = context.config.kill_switches
        if switches:
            await self.set_switches(request.service, {s.name: s.off_value for s in switches})
        self.enter(Phase.VERIFYING)
        if not request.verify_app:  # a parent that rolls the broken app back next checks the app itself
            self.record(EventKind.VERIFIED, "app verification left to the parent workflow")
            result.kill_switches_restored = await self.start_processing(request.service, result.kill_switches_before)
            self.record(EventKind.RESOLVED, f"{request.service} database {done}")
            return await self.finish(result, "restored", done)
        verdict = await self.verify_app(request.service, context.config.health)
        if not verdict.passed:
            self.record(EventKind.VERIFICATION_FAILED, f"app unhealthy on the restored database: {verdict.problem}")
            await self.leave_processing_stopped(f"the app is unhealthy on the restored database ({verdict.problem})")
            return await self.finish(result, "failed", f"{done}, but the app is unhealthy ({verdict.problem}); "
                                     f"processing stays stopped; {kept}")
        self.record(EventKind.VERIFIED, "app healthy on the restored database")
        result.kill_switches_restored = await self.start_processing(request.service, result.kill_switches_before)
        self.record(EventKind.RESOLVED, f"{request.service} database {done}")
        return await self.finish(result, "restored", done)

    async def _supabase_pitr(self, request: RestoreInput, result: RestoreResult,
                             context: ServiceContext) -> RestoreResult:
        """Supabase restores the project in place: so first a safety backup, the rows after the
        target exported, an approval, the switches off; then its restore, then the app verified."""
        target, project = request.target_time, context.config.database.pitr.supabase.project_ref
        if target is None:
            raise ApplicationError("source pitr needs target_time (an ISO time)", non_retryable=True)
        window = await workflow.execute_activity("supabase.pitr_window", ServiceRef(service=request.service),
                                                 result_type=PitrWindow, start_to_close_timeout=timedelta(minutes=2),
                                                 retry_policy=READ_RETRY)
        latest = window.latest or workflow.now()
        if not window.enabled or window.earliest is None or not window.earliest <= target <= latest:
            span = f"{window.earliest.isoformat()} .. {latest.isoformat()}" if window.earliest else "none"
            raise ApplicationError(f"Supabase project {project} cannot be restored to {target.isoformat()}: PITR "
                                   f"{'enabled' if window.enabled else 'not enabled'}, window {span}; nothing was "
                                   "changed", non_retryable=True)
        self.record(EventKind.ASSESSED, f"{target.isoformat()} is inside project {project}'s PITR window")
        result.counts_before = await self._live_counts(request.service)
        if request.dry_run:
            self.record(EventKind.RESOLVED, "dry run: nothing was changed")
            return await self.finish(result, "dry_run", "dry run: the target is restorable; nothing was changed")
        self.enter(Phase.EXECUTING)
        await self._safety_backup(request, result, _stamp())
        recent = await self._export_recent_rows(request, result, target, context)
        outcome = await self._approval(request, "supabase point-in-time restore", (
            f"Supabase restores project {project} in place to {target.isoformat()}; rows newer than that "
            f"(exported): {recent or 'none'}; safety backup {result.safety_backup.backup_id}"))
        if outcome:
            return await self.finish(result, outcome, f"point-in-time restore {outcome}; nothing was changed")
        self.enter(Phase.EXECUTING)
        result.kill_switches_before = await self.stop_processing(request.service, context.config.kill_switches)
        self.live_changed = True  # Supabase restores in place
        try:
            await workflow.execute_activity(
                "supabase.restore_pitr", SupabaseRestoreRequest(service=request.service,
                                                                target_unix=int(target.timestamp())),
                result_type=str, retry_policy=CHANGE_RETRY, **LONG_STEP)
        except ActivityError as exc:
            self.record(EventKind.FAILED, cause_message(exc))
            raise ApplicationError(f"Supabase point-in-time restore failed ({cause_message(exc)}); processing stays "
                                   f"stopped; safety backup {result.safety_backup.backup_id}", non_retryable=True) from None
        self.record(EventKind.ROLLED_BACK, f"Supabase restored project {project} to {target.isoformat()}")
        result.counts_after = await self._live_counts(request.service)
        return await self._resume(request, result, context, f"restored to {target.isoformat()} by Supabase PITR",
                                  f"safety backup {result.safety_backup.backup_id}")

    async def _recover_to_point_in_time(self, request: RestoreInput, result: RestoreResult) -> str | None:
        if request.target_time is None:
            raise ApplicationError("source pitr needs target_time (an ISO time)", non_retryable=True)
        self.enter(Phase.EXECUTING)
        recovery = await workflow.execute_activity(
            "pitr.recover", PitrRequest(service=request.service, target_time=request.target_time,
                                        key=workflow.info().run_id),
            result_type=PitrRecovery, retry_policy=CHANGE_RETRY, **LONG_STEP)
        self.record(EventKind.EXECUTING, f"recovered base backup {recovery.base_backup_id} to "
                    f"{request.target_time.isoformat()} on 127.0.0.1:{recovery.port}")
        if request.pitr_handoff:
            stop_hint = recovery.stop_hint or f"`pg_ctl -D {recovery.data_dir} stop`"  # a worker from before the hint
            result.message = (f"recovered to {request.target_time.isoformat()}: {recovery.dsn} (data directory "
                              f"{recovery.data_dir}; stop it with {stop_hint}); the live database was not touched")
            self.record(EventKind.RESOLVED, result.message)
            return None
        try:
            dumped = await workflow.execute_activity(
                "backups.dump", BackupRequest(service=request.service, from_port=recovery.port,
                                              as_of=request.target_time,
                                              backup_id=f"{request.service}-pitr-{_stamp()}-{workflow.info().run_id[-12:]}"),
                result_type=BackupManifest, retry_policy=CHANGE_RETRY, **LONG_STEP)
        finally:
            await workflow.execute_activity("pitr.discard", recovery, start_to_close_timeout=timedelta(minutes=5),
                                            retry_policy=READ_RETRY)
        self.record(EventKind.CAPTURED, f"the recovered data dumped to {dumped.backup_id}; recovered copy discarded")
        return dumped.backup_id

    async def _live_counts(self, service: str) -> dict[str, int]:
        return await workflow.execute_activity(
            "postgres.table_counts", CountsRequest(service=service), result_type=dict[str, int],
            start_to_close_timeout=timedelta(minutes=10), retry_policy=READ_RETRY,
        )


@workflow.defn
class RestoreCleanupWorkflow(RollbackWorkflowBase):
    """`rollback restore cleanup`: drop the databases restores kept, after the retention period
    and an approval that lists them; younger ones and anything not ours stay."""

    rollback_type = "cleanup"
    locks = ("service", "database")

    @workflow.run
    @guarded
    async def run(self, request: CleanupInput) -> CleanupResult:
        self.start_run(request.service, "P3")
        self.record(EventKind.STARTED, f"cleanup of databases kept by restores of {request.service}, older than "
                    f"{request.older_than}: {request.reason}", actor=request.requested_by)
        result = CleanupResult(service=request.service, outcome="failed")
        kept = await workflow.execute_activity(
            "postgres.kept_databases", ServiceRef(service=request.service), result_type=list[KeptDatabase],
            start_to_close_timeout=timedelta(minutes=2), retry_policy=READ_RETRY)
        cutoff = workflow.now() - request.older_than
        result.candidates = [k for k in kept if k.kept_since < cutoff]
        young = len(kept) - len(result.candidates)
        listing = ", ".join(f"{k.name} ({k.size_bytes // 1024} KiB, kept since {k.kept_since:%Y-%m-%d %H:%M})"
                            for k in result.candidates)
        self.record(EventKind.ASSESSED, f"{len(result.candidates)} kept database(s) older than {request.older_than}"
                    f"{': ' + listing if listing else ''}; {young} younger kept")
        if not result.candidates:
            return await self.finish(result, "nothing_to_do", "no kept database is old enough to drop")
        if request.dry_run:
            return await self.finish(result, "dry_run", f"would drop {len(result.candidates)} database(s)")
        outcome = await self.ask("drop kept databases", f"DROP DATABASE {listing}; this cannot be undone",
                                 request.approval_timeout)
        if outcome:
            return await self.finish(result, outcome, f"cleanup {outcome}; nothing was dropped")
        self.enter(Phase.EXECUTING)
        result.dropped = await workflow.execute_activity(
            "postgres.drop_kept", DropRequest(service=request.service, databases=[k.name for k in result.candidates]),
            result_type=list[str], start_to_close_timeout=timedelta(minutes=10), retry_policy=CHANGE_RETRY)
        self.record(EventKind.RESOLVED, f"dropped {', '.join(result.dropped)}")
        return await self.finish(result, "cleaned", f"dropped {len(result.dropped)} kept database(s)")
