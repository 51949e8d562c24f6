"""AppRollbackWorkflow: put the last known good version of an app back, verify it, say so."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from workflows.base import (CHANGE_RETRY, READ_RETRY, RollbackWorkflowBase, all_settled, bounded_timeline,
                                guarded)
    from workflows.models import (
        AppRollbackInput,
        AppRollbackResult,
        AppVersion,
        CaptureRequest,
        CaptureResult,
        EnvReadRequest,
        EnvSnapshot,
        EventKind,
        ExecuteRequest,
        ExecuteResult,
        HealthSnapshot,
        Outcome,
        Phase,
        MigrationRollbackInput,
        MigrationRollbackResult,
        PostmortemRequest,
        RecentRollbacks,
        SchemaRequest,
        SchemaVersion,
        ServiceRef,
        TargetRequest,
        UndoRequest,
    )
    from workflows.policy import compare_schema, plan_app_rollback

# Providers whose deployments have an environment this system can read and put back.
ENV_PROVIDERS = ("vercel", "docker", "compose")
# How long one provider's execute step may take; providers that poll heartbeat meanwhile.
EXECUTE_TIMEOUT = {"docker": 300, "compose": 300, "vercel": 600, "git": 900}
# Every provider's execute and undo steps heartbeat (Vercel each poll, the others every 2 s while
# their blocking call runs), so a worker that dies mid-step is noticed within this many seconds and
# the retry finishes the step from where it stands, instead of production waiting out the
# start-to-close timeout with nothing serving.
EXECUTE_HEARTBEAT = {"vercel": 10, "docker": 10, "compose": 10, "git": 10}


def _cause(exc: BaseException) -> str:
    while isinstance(exc, ActivityError) and exc.cause is not None:
        exc = exc.cause
    return str(exc)


@workflow.defn
class AppRollbackWorkflow(RollbackWorkflowBase):
    rollback_type = "app"
    locks = ("service",)  # and the database's, taken when the schema must be rolled back first

    def __init__(self) -> None:
        super().__init__()
        self.schema_rolled_back: tuple[str, str, str] | None = None  # child id, version before, after

    @workflow.run
    @guarded
    async def run(self, request: AppRollbackInput) -> AppRollbackResult:
        self.start_run(request.service, request.severity, request.automatic)
        self.approval_only_from_a_parent(request)
        self.public_updates = not request.approved_by  # a parent incident keeps the status page
        self.record(
            EventKind.STARTED,
            f"app rollback of {request.service} requested: {request.reason}",
            actor=request.requested_by,
            dry_run=request.dry_run,
            automatic=request.automatic,
            rule=request.trigger_rule,
        )
        context = await self.service_context(request.service)
        config = context.config
        provider = config.app.provider
        result = AppRollbackResult(service=request.service, outcome="failed", artifact_dir=context.artifact_dir)

        # 1. Assess: health and the version serving (at once: neither needs the other)
        # reads side by side, as regular activities; local reads go one at a time (see `read`)
        parallel = not self.local_reads and workflow.patched("parallel-reads")
        assess = self.read("health.assess", ServiceRef(service=request.service), HealthSnapshot)
        serving = self.read(f"{provider}.current", ServiceRef(service=request.service), AppVersion)
        if parallel:
            health, current = await asyncio.gather(assess, serving)
        else:
            health = await assess
            current = await serving
        self.record(
            EventKind.ASSESSED,
            f"{provider} runs {current.label or current.id}; health: "
            + ("healthy" if health.healthy else health.problem or "unhealthy"),
            health=health.model_dump(mode="json"),
        )
        result.from_version = current.label or current.id

        # 2. Capture state for the post-mortem (a dry run leaves no artifacts, so it skips this);
        # it runs beside the planning reads, which do not need it
        capture = None
        if not request.dry_run:
            capture = self._capture(request.service, provider, context.artifact_dir, current, health.healthy)
            if not parallel:
                await capture
                capture = None
            else:
                capture = asyncio.ensure_future(capture)

        # 3. Target and schema check (and, for an alert's rollback, the cooldown, meanwhile)
        self.enter(Phase.PLANNING)
        cooldown_check = None
        within_cooldown = request.require_approval
        if request.automatic and not request.require_approval and workflow.patched("cooldown-in-workflow"):
            counting = self.read("visibility.recent_automatic_rollbacks", ServiceRef(service=request.service),
                                 RecentRollbacks, timeout=30)
            if self.local_reads:  # one read at a time
                within_cooldown = (await counting).limit_reached
            else:
                cooldown_check = asyncio.ensure_future(counting)
        selecting = self.read(f"{provider}.select_target",
                              TargetRequest(service=request.service, current=current, explicit=request.target),
                              AppVersion)
        reading_schema = self.read("postgres.schema_version", SchemaRequest(service=request.service),
                                   SchemaVersion) if config.database is not None else None
        if parallel:
            # all of them end before anything is decided: a failed read fails the run after the
            # others (the capture included) are done, never with one still running
            reads = [selecting] + ([reading_schema] if reading_schema else []) + ([capture] if capture else [])
            outcomes = await all_settled(*reads)
            target, live = outcomes[0], outcomes[1] if reading_schema else None
        else:
            target = await selecting
            live = await reading_schema if reading_schema else None
        if live is not None:
            schema = compare_schema(target.schema_version, live.version, live.error)
        else:
            schema = compare_schema(target.schema_version, None, "service has no database configured")
        if cooldown_check is not None:
            within_cooldown = (await cooldown_check).limit_reached
        plan = plan_app_rollback(request.service, current, target, schema, config.policy, request.automatic,
                                 within_cooldown=within_cooldown)
        result.plan, result.to_version = plan, target.label or target.id
        self.record(
            EventKind.PLANNED,
            f"roll back {current.label or current.id} -> {target.label or target.id}; {schema.message}",
            steps=plan.steps,
            expected_downtime=plan.expected_downtime,
        )

        # 4. Dry run stops here
        if request.dry_run:
            self.record(EventKind.RESOLVED, "dry run: nothing was changed")
            return await self._finish(result, "dry_run", "dry run: plan only, nothing was changed")

        schema_first = (schema.migration_rollback_needed and config.database is not None
                        and config.database.migration_tool is not None and not request.approved_by
                        and workflow.patched("schema-rollback-child"))
        if schema.migration_rollback_needed and not schema_first:
            # no migration tool configured (or a parent decided otherwise): a person rolls the schema back
            self.record(
                EventKind.FAILED,
                f"stopped before changing anything: the live schema {schema.live_schema_version} must be "
                f"rolled back to {schema.target_schema_version} before this app rollback, and the service has "
                f"no `database.migration_tool` to do it with",
            )
            return await self._finish(
                result, "failed",
                f"live schema {schema.live_schema_version} is ahead of the target's "
                f"{schema.target_schema_version}; roll the schema back to {schema.target_schema_version} with "
                f"the service's migration tool, then retry",
            )

        # 5. Approval (a parent incident's approval of its plan covers this rollback)
        if plan.needs_approval and request.approved_by:
            self.record(EventKind.APPROVED, "app rollback: approved by the parent workflow's checkpoint; "
                        + "; ".join(plan.approval_reasons), actor=request.approved_by)
        elif plan.needs_approval:
            decision = await self.wait_for_approval(
                "app rollback", "; ".join(plan.approval_reasons), request.approval_timeout,
                # the schema step is a database change: its approvers must be admitted for those too
                kinds=["app", "database"] if schema_first else None,
            )
            if decision is None:
                return await self._finish(result, "not_approved", "approval timed out after escalation; nothing changed")
            if not decision.approved:
                return await self._finish(result, "rejected", f"rejected by {decision.approver}: {decision.reason}")
        if schema_first:
            # 5b. The schema first (runbook 001 "app + schema"), as a child under this run's locks
            problem = await self._roll_schema_back(request, schema.target_schema_version)
            if problem is not None:
                return await self._finish(result, "failed", problem)
        # 6. Execute, with the way back registered first
        self.enter(Phase.EXECUTING)
        self.record(EventKind.EXECUTING, plan.steps[-2])
        announcing = self.status_page("identified", f"We are rolling {request.service} back to a previous version.")
        if workflow.patched("announce-beside-execute"):
            # the public notice goes out while the rollback runs: it must not delay the fix
            announcing = asyncio.ensure_future(announcing)
        else:
            await announcing
            announcing = None
        executed: ExecuteResult | None = None
        # Workflow IDs are reused per service, so the run ID makes the key unique to this run.
        key = f"{workflow.info().workflow_id}/{workflow.info().run_id}"
        try:
            executed = await self._provider(
                provider, "execute",
                ExecuteRequest(service=request.service, current=current, target=target, rollback_key=key,
                               reason=request.reason),
                ExecuteResult, timeout=EXECUTE_TIMEOUT[provider], retry=CHANGE_RETRY,
                heartbeat=EXECUTE_HEARTBEAT.get(provider),
            )
            if announcing is not None:
                await announcing  # before any later status: the page's updates stay in order
                announcing = None
            self.record(EventKind.ROLLED_BACK, f"{provider} now serves {target.label or target.id}",
                        details=executed.details)

            # 7. Verify
            self.enter(Phase.VERIFYING)
            check = config.health
            verdict = await self.verify_app(request.service, check,
                                            executed.details.get("expected_version", target.version))
            if not verdict.passed:
                self.record(EventKind.VERIFICATION_FAILED, verdict.problem,
                            checks=[c.model_dump(mode="json") for c in verdict.checks])
                raise ApplicationError(f"verification of {target.label or target.id} failed: {verdict.problem}",
                                       type="VerificationFailed", non_retryable=True)
            self.record(EventKind.VERIFIED, f"{check.consecutive_checks} consecutive healthy checks on "
                        f"{target.label or target.id}")
        except BaseException as exc:  # cancellation compensates too
            if announcing is not None:
                await workflow.wait([announcing])  # "identified" lands before the compensation's notice
            await self._compensate(request, current, target, executed, key, exc)
            message = (
                f"app rollback of {request.service} to {target.label or target.id} failed and was undone: "
                f"{_cause(exc)}. {current.label or current.id} is serving again; look at "
                f"{context.artifact_dir} and `rollback status {workflow.info().workflow_id}` before trying "
                "another target."
            )
            await self._postmortem(result, "compensated", message)
            raise ApplicationError(message, type="RollbackCompensated", non_retryable=True) from exc

        # 8b. Watch: an alert-started rollback waits for its alert to resolve (a resolved notice ends it early)
        if request.watch > timedelta(0):
            self.record(EventKind.DECIDED, f"watching up to {request.watch} for the alert to resolve")
            try:
                await workflow.wait_condition(lambda: self.resolved_alerts > 0, timeout=request.watch)
                self.record(EventKind.VERIFIED, "the alert resolved after the rollback")
            except asyncio.TimeoutError:
                self.record(EventKind.DECIDED, f"no resolved alert within {request.watch}; health checks passed")

        # 9. Report
        self.record(EventKind.RESOLVED, f"{request.service} rolled back to {target.label or target.id}")
        await self.status_page("resolved", f"{request.service} is back on a known good version and verified.")
        await self.notify(
            f"{request.service} rolled back: {current.label or current.id} -> {target.label or target.id}",
            key="resolved", reason=request.reason,
        )
        return await self._finish(result, "rolled_back", f"rolled back to {target.label or target.id}")

    async def _roll_schema_back(self, request: AppRollbackInput, target_version: str) -> str | None:
        """MigrationRollbackWorkflow as a child (its own emergency backup, guard, verification),
        approved by this run's approval. Returns the problem if it did not roll back: the app has
        not been touched then."""
        await self.take_lock(request, kinds=["database"])  # the child runs under this run's locks
        approver = self.decision.approver if self.decision else request.requested_by
        info = workflow.info()
        child_id = f"{info.workflow_id}-schema-{info.run_id[:8]}"
        self.record(EventKind.EXECUTING, f"rolling the schema back to {target_version} first: "
                    f"MigrationRollbackWorkflow {child_id}", child=child_id)
        try:
            done = await workflow.execute_child_workflow(
                "MigrationRollbackWorkflow",
                MigrationRollbackInput(service=request.service, target=target_version, requested_by=approver,
                                       approved_by=approver, verify_app=False,
                                       reason=f"schema for the app rollback {info.workflow_id}: {request.reason}"),
                id=child_id, result_type=MigrationRollbackResult)
        except ChildWorkflowError as exc:
            problem = f"the schema rollback {child_id} failed ({_cause(exc)}); the app was not changed"
            self.record(EventKind.FAILED, problem, child=child_id)
            return problem
        if not Outcome.succeeded(done.outcome):
            problem = f"the schema rollback {child_id} ended {done.outcome} ({done.message}); the app was not changed"
            self.record(EventKind.FAILED, problem, child=child_id)
            return problem
        self.schema_rolled_back = (child_id, done.version_before or "", done.version_after or target_version)
        self.record(EventKind.ROLLED_BACK, f"schema rolled back {done.version_before} -> {done.version_after} by "
                    f"{child_id}", child=child_id)
        return None
    async def _capture(self, service: str, provider: str, artifact_dir: str, current: AppVersion,
                       healthy: bool) -> None:
        capturing = self.read(f"{provider}.capture_state",
                              CaptureRequest(service=service, artifact_dir=artifact_dir, current=current),
                              CaptureResult, timeout=180)
        if provider in ENV_PROVIDERS and not self.local_reads and workflow.patched("env-beside-capture"):
            captured, _ = await asyncio.gather(capturing, self._record_env(service, provider, healthy))
            self.record(EventKind.CAPTURED, f"state captured in {artifact_dir}", files=captured.files)
            return
        captured = await capturing
        self.record(EventKind.CAPTURED, f"state captured in {artifact_dir}", files=captured.files)
        if provider in ENV_PROVIDERS and workflow.patched("record-env-on-capture"):
            await self._record_env(service, provider, healthy)

    async def _record_env(self, service: str, provider: str, healthy: bool) -> None:
        """The environment the current deployment runs with (names and hashes here, values in the
        worker's protected store), so `rollback env diff/restore` can compare and put it back. A
        failure to read it is noted, never a reason to stop the rollback."""
        try:
            snapshot = await self.read(f"{provider}.env_read", EnvReadRequest(
                service=service, reason="captured before an app rollback", healthy=healthy), EnvSnapshot)
        except ActivityError as exc:
            self.record(EventKind.CAPTURED, f"environment not recorded: {_cause(exc)}")
            return
        self.record(EventKind.CAPTURED, f"environment of {snapshot.label or snapshot.deployment} recorded: "
                    f"{len(snapshot.hashes)} variables (names and hashes; values in the protected store)",
                    deployment=snapshot.deployment, variables=sorted(snapshot.hashes))

    async def _provider(self, provider: str, step: str, argument, result_type, *, timeout: int = 60,
                        retry: RetryPolicy = READ_RETRY, heartbeat: int | None = None):
        return await workflow.execute_activity(
            f"{provider}.{step}", argument, result_type=result_type,
            start_to_close_timeout=timedelta(seconds=timeout), retry_policy=retry,
            heartbeat_timeout=timedelta(seconds=heartbeat) if heartbeat else None,
        )

    async def _compensate(self, request: AppRollbackInput, current: AppVersion, target: AppVersion,
                          executed: ExecuteResult | None, key: str, exc: BaseException) -> None:
        self.enter(Phase.COMPENSATING)
        why = "cancelled" if isinstance(exc, asyncio.CancelledError) else _cause(exc)
        self.record(EventKind.COMPENSATING, f"putting {current.label or current.id} back: {why}")
        try:
            undone = await workflow.execute_activity(
                f"{current.provider}.undo",
                UndoRequest(service=request.service, current=current, target=target, executed=executed,
                            rollback_key=key),
                result_type=ExecuteResult, start_to_close_timeout=timedelta(seconds=EXECUTE_TIMEOUT[current.provider]),
                heartbeat_timeout=timedelta(seconds=EXECUTE_HEARTBEAT[current.provider]),
                retry_policy=RetryPolicy(maximum_attempts=5),
            )
        except ActivityError as undo_error:
            self.record(EventKind.FAILED, f"COMPENSATION FAILED, manual action needed: {_cause(undo_error)}")
            self.enter(Phase.FAILED)
            await self.notify(f"{request.service}: rollback failed AND could not be undone: {_cause(undo_error)}",
                              key="compensation-failed", escalation=True)
            raise ApplicationError(
                f"rollback of {request.service} failed ({why}) and putting {current.label or current.id} back "
                f"also failed ({_cause(undo_error)}): restore it by hand",
                type="CompensationFailed", non_retryable=True,
            ) from undo_error
        self.record(EventKind.COMPENSATED, f"{current.label or current.id} restored", details=undone.details)
        if self.schema_rolled_back is not None:
            child_id, before, after = self.schema_rolled_back
            warning = (f"{current.label or current.id} is serving again but the schema stays at {after} (rolled back "
                       f"from {before} by {child_id}): re-apply the migrations with the service's migration tool or "
                       "roll back to another target")
            self.record(EventKind.ESCALATED, warning)
            await self.notify(f"{request.service}: {warning}", key="schema-left-behind", escalation=True)
        await self.status_page("investigating", f"A rollback of {request.service} did not help; we are investigating.")
        self.enter(Phase.FAILED)
        await self.notify(f"{request.service} rollback to {target.label or target.id} failed and was undone: {why}",
                          key="compensated")

    async def _finish(self, result: AppRollbackResult, outcome: str, message: str) -> AppRollbackResult:
        self.close(result, outcome, message, succeeded=Outcome.succeeded(outcome))
        if outcome != "dry_run":
            await self._postmortem(result, outcome, message)
        await self.finish_handlers()
        return result

    async def _postmortem(self, result: AppRollbackResult, outcome: str, message: str) -> None:
        """Render the timeline into postmortem.md beside the captured state."""
        await workflow.execute_activity(
            "capture.postmortem",
            PostmortemRequest(service=result.service, artifact_dir=result.artifact_dir or "",
                              title=f"App rollback of {result.service}: {outcome}",
                              summary={"from": result.from_version, "to": result.to_version, "outcome": outcome,
                                       "message": message, "phase_seconds": dict(self.phase_seconds),
                                       "alerts received": self.alerts_received},
                              timeline=bounded_timeline(self.events), alerts=self.top_alerts(100)),
            start_to_close_timeout=timedelta(seconds=30), retry_policy=READ_RETRY,
        )
