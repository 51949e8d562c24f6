"""IncidentWorkflow: runbook 001 end to end ("full emergency").

Declare and classify, tell people (Slack, Statuspage for P0/P1) and page on-call when nobody
acknowledges in time, assess (read only), plan the combination of rollbacks, stabilise (kill
switches off, verified emergency backup), one approval for the whole plan, the rollbacks as child
workflows, verify, switches back one at a time, watch, resolve, post-mortem. Updates go to Slack
on the severity's cadence the whole time.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from workflows.app_rollback import AppRollbackWorkflow
    from workflows.base import (READ_RETRY, SEVERITY_KEY, TOP_ALERTS, RollbackWorkflowBase, bounded_timeline,
                                cause_message, guarded)
    from workflows.config import IncidentConfig, SEVERITIES, ServiceConfig
    from workflows.migration import MigrationRollbackWorkflow
    from workflows.models import (
        AcknowledgeInput,
        AppRollbackInput,
        AppRollbackResult,
        AppVersion,
        ApprovalInput,
        AssessReport,
        BackupInput,
        BackupManifest,
        ChildRun,
        DamageRequest,
        DataDamage,
        EventKind,
        IncidentInput,
        IncidentPlan,
        IncidentPostmortemRequest,
        IncidentResult,
        IncidentStatus,
        Milestones,
        MigrationRollbackInput,
        MigrationRollbackResult,
        MigrationStatus,
        Outcome,
        PagerDutyRequest,
        Phase,
        ResolveInput,
        RestoreInput,
        RestoreResult,
        SchemaRequest,
        SchemaVersion,
        ServiceContext,
        ServiceRef,
        SeverityInput,
        TargetRequest,
    )
    from workflows.policy import classify_incident, compare_schema, plan_incident, rows_lost
    from workflows.restore import BackupWorkflow, DatabaseRestoreWorkflow

QUICK = dict(start_to_close_timeout=timedelta(minutes=2), retry_policy=READ_RETRY)
PAGER_SEVERITY = {"P0": "critical", "P1": "error", "P2": "warning", "P3": "info"}
STATUS_WORD = {Phase.DONE: "Resolved", Phase.EXECUTING: "Mitigating", Phase.VERIFYING: "Mitigating",
               Phase.MITIGATING: "Mitigating", Phase.COMPENSATING: "Mitigating"}
# What a status page says when an incident goes public part-way through (raised to P0/P1)
STATUSPAGE_TEXT = {"investigating": "We are investigating a problem with {service}.",
                   "identified": "We have identified the problem with {service} and are rolling back.",
                   "monitoring": "A fix for {service} is in place; we are monitoring."}
# The events an update's "Timeline" lists; alerts are counted instead, approvals asked elsewhere.
NEWS = {EventKind.ASSESSED, EventKind.PLANNED, EventKind.APPROVED, EventKind.REJECTED, EventKind.ESCALATED,
        EventKind.EXECUTING, EventKind.ROLLED_BACK, EventKind.VERIFIED, EventKind.VERIFICATION_FAILED,
        EventKind.ACKNOWLEDGED, EventKind.DECIDED, EventKind.CAPTURED, EventKind.FAILED}


def incident_id(service: str) -> str:
    """One open incident per service: the ID is the service's, reused after it closes."""
    return f"incident-{service}"


def _minutes(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60} hours {minutes % 60} minutes" if minutes >= 60 else f"{minutes} minutes" if minutes \
        else f"{int(delta.total_seconds())} seconds"


async def assess_service(service: str, config: ServiceConfig) -> AssessReport:
    """Runbook 001 step 2, status only: health and endpoints, logs, database, the version
    serving and the migration state; reads only."""
    report = await workflow.execute_activity("incident.assess", ServiceRef(service=service),
                                             result_type=AssessReport, **QUICK)
    try:
        report.app = await workflow.execute_activity(f"{config.app.provider}.current", ServiceRef(service=service),
                                                      result_type=AppVersion, **QUICK)
    except ActivityError as exc:
        report.app_error = cause_message(exc)
    if config.database is not None and config.database.migration_tool is not None:
        try:
            report.migrations = await workflow.execute_activity(
                "migrations.status", ServiceRef(service=service), result_type=MigrationStatus, **QUICK)
        except ActivityError as exc:
            report.migrations_error = cause_message(exc)
    return report


def describe_assessment(report: AssessReport) -> str:
    health = "healthy" if report.health.healthy else report.health.problem or "unhealthy"
    endpoints = ", ".join(f"{e.url} {'ok' if e.ok else e.problem}" for e in report.endpoints)
    running = (report.app.label or report.app.id) if report.app else report.app_error
    migrations = report.migrations.current if report.migrations else report.migrations_error or "n/a"
    database = "reachable" if report.database_reachable else report.database_error or "n/a"
    sessions = f", {report.active_sessions} active session(s)" if report.active_sessions is not None else ""
    return (f"{report.service}: {health}; running {running}; migrations at {migrations}; database {database}"
            f"{sessions}{'; endpoints: ' + endpoints if endpoints else ''}")


@workflow.defn
class AssessWorkflow:
    """`rollback assess SERVICE`: the incident's assessment alone, in the worker that holds the
    secrets; it changes nothing."""

    @workflow.run
    async def run(self, request: ServiceRef) -> AssessReport:
        context = await workflow.execute_activity("config.service", request, result_type=ServiceContext, **QUICK)
        return await assess_service(request.service, context.config)


@workflow.defn
class IncidentWorkflow(RollbackWorkflowBase):
    rollback_type = "incident"
    locks = ("service", "database")  # its children run under it

    def __init__(self) -> None:
        super().__init__()
        self.severity, self.rule = "P1", ""
        self.settings = IncidentConfig()
        self.milestones: Milestones | None = None
        self.acknowledged_by: str | None = None
        self.plan: IncidentPlan | None = None
        self.children: list[ChildRun] = []
        self.resolution: ResolveInput | None = None
        self.closed = False
        self.paged = False
        self.announced = False  # declared in Slack (not a dry run): raising the severity may go public
        self.public = False  # a Statuspage incident is open: it is walked to resolved whatever the severity
        self.next_update_at = None
        self.updates_sent = 0
        self.reported_up_to = 0  # timeline index the last Slack update covered

    # -- queries, signals and updates ------------------------------------------------------------
    @workflow.query
    def status(self) -> IncidentStatus:
        return IncidentStatus(workflow=self.rollback_type, service=self.service, phase=self.phase,
                              waiting_for_approval=self.awaiting_step, timeline=bounded_timeline(self.events),
                              alerts_received=self.alerts_received, alerts_distinct=len(self.alert_counts),
                              top_alerts=self.top_alerts(TOP_ALERTS), severity=self.severity,
                              rule=self.rule, acknowledged_by=self.acknowledged_by, alerts=self.top_alerts(TOP_ALERTS),
                              plan=self.plan, children=self.children, next_update_at=self.next_update_at,
                              milestones=self.milestones)

    @workflow.update
    async def acknowledge(self, ack: AcknowledgeInput) -> str:
        self._acknowledge(ack.by, ack.note)
        if self.paged:  # the page PagerDuty holds open is someone's now
            await self._pagerduty("acknowledge", f"{self.service} incident acknowledged by {ack.by}")
        return f"acknowledged by {self.acknowledged_by}"  # two at once: the first one is the one

    @acknowledge.validator
    def _check_acknowledge(self, ack: AcknowledgeInput) -> None:
        if not ack.by.strip():
            raise ValueError("say who acknowledges (--as NAME)")
        if self.milestones is None:
            raise ValueError("the incident is still starting; try again in a moment")
        if self.acknowledged_by is not None:
            raise ValueError(f"already acknowledged by {self.acknowledged_by}")
        if self.closed:
            raise ValueError("the incident is closed")

    @workflow.update
    async def set_severity(self, change: SeverityInput) -> str:
        old, self.severity = self.severity, change.severity.upper()
        self.rule = f"{self.severity}: changed from {old} by {change.by} ({change.reason})"
        self.record(EventKind.DECIDED, f"severity {old} -> {self.severity}: {change.reason}", actor=change.by,
                    rule=self.rule)
        workflow.upsert_search_attributes([SEVERITY_KEY.value_set(self.severity)])
        if self.announced and not self.public and self.severity in ("P0", "P1") \
                and workflow.patched("raised-severity-opens-statuspage"):
            # runbook 001: P0/P1 incidents are public; one raised to P1 gets its status page now
            stage = "monitoring" if self.milestones.mitigated else \
                "identified" if self.phase in (Phase.EXECUTING, Phase.VERIFYING) else "investigating"
            await self._status_page(stage, STATUSPAGE_TEXT[stage].format(service=self.service))
        return self.rule

    @set_severity.validator
    def _check_severity(self, change: SeverityInput) -> None:
        if change.severity.upper() not in SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}")
        if change.severity.upper() == self.severity:
            raise ValueError(f"the incident is already {self.severity}")
        if not change.reason.strip():
            raise ValueError("a reason is required")
        if self.closed:
            raise ValueError("the incident is closed")

    @workflow.update
    def resolve(self, request: ResolveInput) -> str:
        if not workflow.patched("refused-resolve-changes-nothing"):
            self.resolution = request  # runs from before set it first, refused or not (replay)
        if self.awaiting_step is not None and self.decision is None:
            # closing the incident answers its open question: the plan is not carried out (and
            # one the approver policy refuses here raises before anything changed)
            self._decide(ApprovalInput(approver=request.by, reason=f"incident resolved: {request.reason}"),
                         approved=False)
        self.resolution = request
        return f"resolving: {request.reason}"

    @resolve.validator
    def _check_resolve(self, request: ResolveInput) -> None:
        if not request.reason.strip():
            raise ValueError("a reason is required")
        if self.resolution is not None or self.closed:
            raise ValueError("the incident is already resolved")
        verified = self.phase == Phase.VERIFYING and self.milestones is not None and self.milestones.mitigated
        if self.phase in (Phase.EXECUTING, Phase.VERIFYING) and not verified:  # the watch after it may be cut short
            raise ValueError(f"the incident is {self.phase.value}; wait for it to finish or fail")

    def _acknowledge(self, by: str, note: str = "") -> None:
        if self.acknowledged_by is not None:
            return
        self.acknowledged_by = by
        self.milestones.acknowledged = max(workflow.now(), self.milestones.started)
        self.record(EventKind.ACKNOWLEDGED, f"acknowledged by {by}" + (f": {note}" if note else ""), actor=by)

    # -- the run -------------------------------------------------------------------------------
    @workflow.run
    @guarded
    async def run(self, request: IncidentInput) -> IncidentResult:
        now = workflow.now()
        self.severity, self.rule = classify_incident(request.severity, request.trigger, request.error_rate)
        self.start_run(request.service, self.severity, request.automatic)
        detected = min(request.detected_at or now, now)
        self.milestones = Milestones(detected=detected, started=now)
        self.record(EventKind.STARTED, f"incident declared for {request.service}: {request.reason}",
                    actor=request.requested_by, dry_run=request.dry_run, severity=self.severity,
                    rule=request.trigger_rule)
        self.record(EventKind.DECIDED, f"classified {self.rule}", rule=self.rule)
        context = await self.service_context(request.service)
        config, self.settings = context.config, context.config.incident
        result = IncidentResult(service=request.service, outcome="failed", artifact_dir=context.artifact_dir)
        background: list[asyncio.Future] = []
        if not request.dry_run:  # a dry run tells nobody and pages nobody
            await self.notify(self._declared_text(request), key=self._key("declared"))
            await self._status_page("investigating", f"We are investigating a problem with {request.service}.")
            self.announced = True
            background = [asyncio.ensure_future(self._escalate_unless_acknowledged()),
                          asyncio.ensure_future(self._updates_on_cadence())]
        try:
            return await self._respond(request, config, context.artifact_dir, result)
        finally:
            self.closed = True
            for task in background:
                await task

    async def _respond(self, request: IncidentInput, config: ServiceConfig, artifact_dir: str,
                       result: IncidentResult) -> IncidentResult:
        # 2. Assess (status only) and plan
        result.assessment = baseline = await self._assess(request.service, config)
        self.enter(Phase.PLANNING)
        self.plan = result.plan = await self._plan(request, config, baseline)
        if request.dry_run:
            self.record(EventKind.RESOLVED, "dry run: plan only, nothing was changed")
            return await self._close_result(result, "dry_run", "dry run: plan only, nothing was changed")

        # A person who resolved it while it was assessed (a false alarm) stops it here: nothing
        # is switched off, backed up or asked
        resolved_early = self.resolution is not None and workflow.patched("resolved-before-acting")
        # 3. Stabilise before anything destructive: processing off, a verified emergency backup
        if not resolved_early:
            self.enter(Phase.EXECUTING)
            result.kill_switches_before = await self.stop_processing(request.service, config.kill_switches)
            if config.database is not None:
                result.emergency_backup = await self._child(
                    BackupWorkflow.run, "BackupWorkflow", "emergency-backup",
                    BackupInput(service=request.service, reason=f"emergency backup of {incident_id(request.service)}"),
                    BackupManifest)
                self.record(EventKind.CAPTURED, f"emergency backup {result.emergency_backup.backup_id} verified "
                            f"(sha256 {result.emergency_backup.sha256[:12]}…, full read OK)")

        # 4. One approval for the whole plan; it acknowledges too
        problem = None
        if self.resolution is not None and workflow.patched("resolved-before-acting"):  # now, or during the backup
            self.record(EventKind.DECIDED, "resolved before the plan was asked for: nothing is carried out")
        elif self.plan.steps:
            # the plan's database steps need approvers the database policy admits too (and four eyes)
            database = self.plan.migration_target is not None or self.plan.restore_from is not None
            p0_restore = self.severity == "P0" and self.plan.restore_from is not None
            outcome = await self.ask("incident plan", "; ".join(self.plan.steps + self.plan.notes),
                                     request.approval_timeout, kinds=["incident", "database"] if database else ["incident"],
                                     approvers_needed=self.approvers.min_approvers_p0_restore
                                     if p0_restore and self.approvers else 1)
            if self.decision is not None and self.decision.approved:
                self._acknowledge(self.decision.approver, "approved the plan")
            if outcome is None:
                problem = await self._execute(request, result)
                if problem is None:
                    problem = await self._verify(request.service, config, baseline)
            elif self.resolution is None:
                problem = (f"the plan was {outcome.replace('_', ' ')}; nothing was rolled back. Next safe choice: "
                           f"run the steps by hand or `rollback resolve {incident_id(request.service)} --reason …`")
        else:
            self.record(EventKind.DECIDED, "nothing to roll back: " + ("; ".join(self.plan.notes) or
                                                                       "the app has no earlier version"))
            problem = "no rollback planned; waiting for a person to resolve the incident"
        if problem is not None and self.resolution is None:
            await self._mitigating(problem)
        if self.resolution is not None:
            self.record(EventKind.DECIDED, f"resolved by {self.resolution.by}: {self.resolution.reason}",
                        actor=self.resolution.by)
            self.milestones.mitigated = self.milestones.mitigated or workflow.now()

        # 5. Processing back one switch at a time, then watch
        if self.switches_off is not None:
            if not await self._switches_back_gradually(request.service, config):
                return await self._resolve(request, result, artifact_dir, kept_off=True)
        if self.resolution is None:
            watch = request.watch if request.watch is not None else self.settings.watch_period
            self.record(EventKind.DECIDED, f"watching {request.service} for {_minutes(watch)}")
            try:
                await workflow.wait_condition(lambda: self.resolution is not None, timeout=watch)
            except asyncio.TimeoutError:
                pass
            firing = [a for a in self.alert_counts.values() if a.status == "firing" and a.last_seen > self.milestones.mitigated]
            self.record(EventKind.VERIFIED, f"watch period over: {len(firing)} alert(s) fired after mitigation")
        return await self._resolve(request, result, artifact_dir)

    # -- steps -------------------------------------------------------------------------------
    async def _assess(self, service: str, config: ServiceConfig) -> AssessReport:
        report = await assess_service(service, config)
        self.record(EventKind.ASSESSED, describe_assessment(report), report=report.model_dump(mode="json"))
        return report

    async def _plan(self, request: IncidentInput, config: ServiceConfig, report: AssessReport) -> IncidentPlan:
        current, target, schema, target_error = report.app, None, None, report.app_error
        if current is not None:
            try:
                target = await workflow.execute_activity(
                    f"{config.app.provider}.select_target", TargetRequest(service=request.service, current=current),
                    result_type=AppVersion, **QUICK)
            except ActivityError as exc:
                target_error = cause_message(exc)
        damage: list[DataDamage] = []
        manifests: list[BackupManifest] = []
        if config.database is not None:
            live = await workflow.execute_activity("postgres.schema_version", SchemaRequest(service=request.service),
                                                   result_type=SchemaVersion, **QUICK)
            if target is not None:
                schema = compare_schema(target.schema_version, live.version, live.error)
            if config.database.migration_tool is not None and (schema is None or schema.checked):
                since = schema.target_schema_version if schema is not None else None
                if schema is None or schema.migration_rollback_needed:
                    damage = await workflow.execute_activity(
                        "migrations.damage_since", DamageRequest(service=request.service, since_version=since),
                        result_type=list[DataDamage], **QUICK)
            manifests = await workflow.execute_activity("backups.list", ServiceRef(service=request.service),
                                                        result_type=list[BackupManifest], **QUICK)
        corruption = request.trigger.strip().lower().replace(" ", "_") in ("data_corruption", "data_loss")
        plan = plan_incident(current, target, schema, damage, manifests, corruption, target_error)
        self.record(EventKind.PLANNED, f"plan ({plan.kind}): " + ("; then ".join(plan.steps) or "no rollback")
                    + "".join(f". {note}" for note in plan.notes), steps=plan.steps, notes=plan.notes)
        return plan

    async def _execute(self, request: IncidentInput, result: IncidentResult) -> str | None:
        """The children the plan lists, in order; each is told who approved, so none asks again.
        The first that fails stops the rest: the problem and the next safe choice come back."""
        approver, service = self.decision.approver, request.service
        why = f"{incident_id(service)}: {request.reason}"
        self.live_changed = True  # from the first child on, putting switches back is a person's call
        try:
            if self.plan.migration_target is not None:
                await self._child(MigrationRollbackWorkflow.run, "MigrationRollbackWorkflow", "migration",
                                  MigrationRollbackInput(service=service, target=self.plan.migration_target,
                                                         reason=why, requested_by=approver, approved_by=approver,
                                                         verify_app=False), MigrationRollbackResult)
            if self.plan.restore_from is not None:
                await self._child(DatabaseRestoreWorkflow.run, "DatabaseRestoreWorkflow", "restore",
                                  RestoreInput(service=service, source=self.plan.restore_from, reason=why,
                                               requested_by=approver, approved_by=approver, reimport_recent=True,
                                               verify_app=False), RestoreResult)
            if self.plan.app_target is not None:
                await self._child(AppRollbackWorkflow.run, "AppRollbackWorkflow", "app",
                                  AppRollbackInput(service=service, reason=why, requested_by=approver,
                                                   approved_by=approver, severity=self.severity,
                                                   automatic=request.automatic), AppRollbackResult)
        except (ChildWorkflowError, ApplicationError) as exc:
            return self._next_safe_choice(result, cause_message(exc))
        return None

    async def _child(self, run, name: str, suffix: str, argument, result_type):
        child_id = f"{workflow.info().workflow_id}-{suffix}"
        child = ChildRun(workflow=name, workflow_id=child_id)
        self.children.append(child)
        self.record(EventKind.EXECUTING, f"{name} started as {child_id}", child=child_id)
        try:
            done = await workflow.execute_child_workflow(run, argument, id=child_id, result_type=result_type)
        except ChildWorkflowError as exc:
            child.outcome, child.message = "failed", cause_message(exc)
            self.record(EventKind.FAILED, f"{name} {child_id} failed: {child.message}", child=child_id)
            raise
        child.outcome = getattr(done, "outcome", Outcome.VERIFIED.value)
        child.message = getattr(done, "message", "") or getattr(done, "backup_id", "")
        if not Outcome.succeeded(child.outcome):
            self.record(EventKind.FAILED, f"{name} {child_id} ended {child.outcome}: {child.message}", child=child_id)
            raise ApplicationError(f"{name} ended {child.outcome}: {child.message}")
        self.record(EventKind.ROLLED_BACK if suffix != "emergency-backup" else EventKind.CAPTURED,
                    f"{name} {child_id}: {child.outcome}" + (f" ({child.message})" if child.message else ""),
                    child=child_id)
        return done

    def _next_safe_choice(self, result: IncidentResult, problem: str) -> str:
        failed = next((c for c in reversed(self.children) if c.outcome != "running" and
                       not Outcome.succeeded(c.outcome)), None)
        service = self.service
        backup = result.emergency_backup.backup_id if result.emergency_backup else None
        choice = {
            "MigrationRollbackWorkflow": f"look at `rollback status {failed.workflow_id if failed else ''}`; "
                                         + (f"restore the emergency backup: `rollback restore {service} --from {backup}`"
                                            if backup else "restore a backup"),
            "DatabaseRestoreWorkflow": f"the live database was kept; retry `rollback restore {service} --from "
                                       f"{self.plan.restore_from}` or restore the emergency backup {backup}",
            "AppRollbackWorkflow": f"the app was put back as it was; try another target: `rollback app {service} "
                                   "--to …`",
        }.get(failed.workflow if failed else "", f"look at `rollback status {incident_id(service)}`")
        return f"{problem}. Next safe choice: {choice}"

    async def _verify(self, service: str, config: ServiceConfig, baseline: AssessReport) -> str | None:
        """Runbook 001's verification: health, critical endpoints, critical tables, migration
        state, response time against the incident's first assessment."""
        self.enter(Phase.VERIFYING)
        problems = []
        verdict = await self.verify_app(service, config.health)
        if not verdict.passed:
            problems.append(f"app health: {verdict.problem}")
        after = await workflow.execute_activity("incident.assess", ServiceRef(service=service),
                                                result_type=AssessReport, **QUICK)
        problems += [f"endpoint {e.url}: {e.problem}" for e in after.endpoints if not e.ok]
        if config.database is not None:
            if after.database_error or not after.database_reachable:
                problems.append(f"database: {after.database_error or 'unreachable'}")
            if self.plan.migration_target is not None:
                live = await workflow.execute_activity("postgres.schema_version", SchemaRequest(service=service),
                                                       result_type=SchemaVersion, **QUICK)
                if live.version != self.plan.migration_target:
                    problems.append(f"schema is at {live.version}, expected {self.plan.migration_target}")
        lost = rows_lost(baseline.table_counts, after.table_counts)
        if lost and workflow.patched("verify-critical-table-counts"):
            problems += lost
        if baseline.response_ms and after.response_ms and \
                after.response_ms > baseline.response_ms * self.settings.slowdown_factor + 50:
            problems.append(f"health answers in {after.response_ms:.0f} ms, was {baseline.response_ms:.0f} ms")
        if problems:
            self.record(EventKind.VERIFICATION_FAILED, "; ".join(problems))
            return "verification failed: " + "; ".join(problems) + ". Next safe choice: look at the children's " \
                   f"runs (`rollback status {incident_id(service)}`) before putting processing back"
        counts = ", ".join(f"{t} {n}" for t, n in after.table_counts.items())
        self.record(EventKind.VERIFIED, f"{config.health.consecutive_checks} healthy checks, "
                    f"{len(after.endpoints)} endpoint(s) ok{', critical tables: ' + counts if counts else ''}"
                    f"{', schema at ' + self.plan.migration_target if self.plan.migration_target else ''}, health "
                    f"answers in {after.response_ms or 0:.0f} ms (was {baseline.response_ms or 0:.0f} ms)")
        self.milestones.mitigated = workflow.now()
        await self._status_page("monitoring", f"A fix for {service} is in place; we are monitoring.")
        return None

    async def _mitigating(self, problem: str) -> None:
        """Never a half state nobody is told about: say what failed and what is safe next, then
        wait for a person (`rollback resolve`)."""
        self.enter(Phase.MITIGATING)
        self.record(EventKind.ESCALATED, problem)
        await self.notify(f"ESCALATION: {self.service} incident needs a person: {problem}",
                          key=self._key(f"mitigating:{len(self.events)}"), escalation=True)
        await workflow.wait_condition(lambda: self.resolution is not None)

    async def _switches_back_gradually(self, service: str, config: ServiceConfig) -> bool:
        """One switch at a time, a health check after each; an unhealthy app turns that one off
        again and the rest stay off, said loudly."""
        previous = dict(self.switches_off)
        for number, (name, value) in enumerate(previous.items()):
            await self.set_switches(service, {name: value})
            verdict = await self.verify_app(service, config.health)
            if not verdict.passed:
                await self.set_switches(service, {name: self.off_values[name]})
                self.switches_off = {n: v for n, v in list(previous.items())[number:]}
                await self.leave_processing_stopped(f"the app was unhealthy after {name} went back to {value} "
                                                    f"({verdict.problem})")
                return False
            self.record(EventKind.EXECUTING, f"kill switch {name} back to "
                        f"{value if value is not None else '(not set)'}; app healthy")
        self.switches_off = None
        return True

    async def _resolve(self, request: IncidentInput, result: IncidentResult, artifact_dir: str,
                       kept_off: bool = False) -> IncidentResult:
        now = workflow.now()
        self.milestones.mitigated = self.milestones.mitigated or now
        self.milestones.resolved = now
        duration = _minutes(now - self.milestones.detected)
        how = "; ".join(f"{c.workflow} {c.outcome}" for c in self.children if c.workflow != "BackupWorkflow") \
            or (self.resolution.reason if self.resolution else "no rollback")
        self.record(EventKind.RESOLVED, f"incident resolved after {duration}: {how}"
                    + (" (processing stays stopped)" if kept_off else ""))
        if self.paged:
            await self._pagerduty("resolve", f"{self.service} incident resolved")
        await self._status_page("resolved", f"{self.service} is operating normally again.")
        await self.notify(f"✅ INCIDENT RESOLVED ✅\nService: {self.service}\nSeverity: {self.severity}\n"
                          f"Duration: {duration}\nResolution: {how}\n\nPost-incident analysis will follow.\n"
                          f"On-call: {self.acknowledged_by or 'not acknowledged'}", key=self._key("resolved"))
        result.durations = self.milestones.durations()
        result.postmortem = await workflow.execute_activity(
            "capture.incident_postmortem", self._postmortem_request(request, artifact_dir, how, duration),
            result_type=list[str], **QUICK)
        self.record(EventKind.CAPTURED, f"post-mortem written: {', '.join(result.postmortem)}")
        figures = ", ".join(f"{k.replace('_', ' ')} {v:g} s" for k, v in result.durations.items() if v is not None)
        await self.notify(f"Post-mortem of {incident_id(self.service)}: {figures}; {result.postmortem[0]}",
                          key=self._key("postmortem"))
        return await self._close_result(result, "resolved", f"resolved after {duration}: {how}")

    async def _close_result(self, result: IncidentResult, outcome: str, message: str) -> IncidentResult:
        self.closed = True
        result.severity, result.rule, result.plan = self.severity, self.rule, self.plan
        result.children, result.alerts, result.milestones = self.children, list(self.alert_counts.values()), self.milestones
        result.durations = self.milestones.durations()
        return await self.finish(result, outcome, message)

    def _postmortem_request(self, request: IncidentInput, artifact_dir: str, how: str,
                            duration: str) -> IncidentPostmortemRequest:
        decisions = [f"{e.at:%H:%M:%S} {e.message} ({e.actor})" + (f"; rule: {e.data['rule']}" if "rule" in e.data
                                                                     else "")
                     for e in self.events if e.kind in (EventKind.DECIDED, EventKind.APPROVED, EventKind.REJECTED,
                                                        EventKind.ACKNOWLEDGED)]
        impact = next((e.message for e in self.events if e.kind == EventKind.ASSESSED), request.reason)
        return IncidentPostmortemRequest(
            service=self.service, artifact_dir=artifact_dir, incident_id=incident_id(self.service),
            title=f"{self.service} incident {self.milestones.detected:%Y-%m-%d %H:%M} UTC ({self.severity})",
            summary={"Date": f"{self.milestones.detected:%Y-%m-%d}", "Duration": duration, "Severity": self.severity,
                     "Classification rule": self.rule, "Impact": impact, "Trigger": request.reason,
                     "Alerts": ", ".join(f"{a.fingerprint} x{a.count}" for a in self.alert_counts.values()) or "none",
                     "Acknowledged by": self.acknowledged_by or "nobody"},
            durations=self.milestones.durations(), decisions=decisions,
            methods=[f"{c.workflow} `{c.workflow_id}`: {c.outcome} {c.message}".strip() for c in self.children] or [how],
            evidence=[artifact_dir] + [f"`rollback status {c.workflow_id}`" for c in self.children],
            timeline=list(self.events))

    # -- people: escalation, cadence, PagerDuty ------------------------------------------------------
    async def _escalate_unless_acknowledged(self) -> None:
        """Runbook 001's response time, counted from detection: nobody acknowledged -> the
        escalation channel and a PagerDuty page. A changed severity moves the deadline."""
        while self.acknowledged_by is None and not self.closed:
            severity = self.severity
            remaining = self.milestones.detected + self.settings.response_times[severity] - workflow.now()
            if remaining <= timedelta(0):
                break
            try:
                await workflow.wait_condition(lambda: self.acknowledged_by is not None or self.closed
                                              or self.severity != severity, timeout=remaining)
            except asyncio.TimeoutError:
                pass
        if self.acknowledged_by is not None or self.closed:
            return
        waited = _minutes(workflow.now() - self.milestones.detected)
        self.record(EventKind.ESCALATED, f"nobody acknowledged the {self.severity} incident within {waited}: "
                    "paging on-call")
        await self.notify(f"ESCALATION: {self.severity} incident on {self.service} not acknowledged after {waited}. "
                          f"`rollback ack {incident_id(self.service)} --as NAME`", key=self._key("escalation"),
                          escalation=True)
        if await self._pagerduty("trigger", f"{self.severity} incident on {self.service}: not acknowledged after "
                                 f"{waited}"):
            self.paged = True
            if self.acknowledged_by is not None:  # acknowledged while the page was on its way
                await self._pagerduty("acknowledge", f"{self.service} incident acknowledged by {self.acknowledged_by}")

    async def _updates_on_cadence(self) -> None:
        """Runbook 001's update template on the severity's cadence, until the incident closes."""
        while not self.closed:
            severity = self.severity
            cadence = self.settings.update_cadence[severity]
            self.next_update_at = workflow.now() + cadence
            try:
                await workflow.wait_condition(lambda: self.closed or self.severity != severity, timeout=cadence)
            except asyncio.TimeoutError:
                await self._post_update()

    async def _post_update(self) -> None:
        self.updates_sent += 1
        cadence = self.settings.update_cadence[self.severity]
        news = [e for e in self.events[self.reported_up_to:] if e.kind in NEWS]
        self.reported_up_to = len(self.events)
        firing = sum(a.count for a in self.alert_counts.values() if a.status == "firing")
        status = STATUS_WORD.get(self.phase, "Investigating")
        timeline = "\n".join(f"- {e.at:%H:%M} {e.message}" for e in news[-8:]) or "- no change since the last update"
        impact = next((e.message for e in reversed(self.events) if e.kind == EventKind.ASSESSED), "being assessed")
        next_at = workflow.now() + cadence
        await self.notify(
            f"🚨 INCIDENT UPDATE - {self.severity}\nStatus: {status}\nImpact: {impact}\nAlerts firing: {firing}\n"
            f"Timeline:\n{timeline}\nNext Update: {next_at:%H:%M} UTC\n"
            f"On-call: {self.acknowledged_by or 'not acknowledged'}",
            key=self._key(f"update:{self.updates_sent}"))

    async def _pagerduty(self, action: str, summary: str) -> bool:
        request = PagerDutyRequest(service=self.service, key=self._key(f"pagerduty:{action}"), action=action,
                                   dedup_key=incident_id(self.service), summary=summary,
                                   severity=PAGER_SEVERITY[self.severity],
                                   details={"workflow_id": workflow.info().workflow_id, "severity": self.severity})
        sent = await self._best_effort("pagerduty.event", request, bool, f"PagerDuty {action}")
        if sent:
            self.record(EventKind.NOTIFIED, f"PagerDuty {action} ({incident_id(self.service)})")
        return bool(sent)

    # -- helpers -------------------------------------------------------------------------------------
    def _key(self, what: str) -> str:
        # the workflow ID is reused per service: the run ID keeps each incident's messages apart
        return f"{workflow.info().run_id}:{what}"

    async def _status_page(self, status: str, body: str) -> None:
        """Runbook 001: status page updates for P0/P1; one opened stays on until resolved."""
        if self.public or self.severity in ("P0", "P1"):
            self.public = True
            await self.status_page(status, body, impact="critical" if self.severity == "P0" else "major")

    def _declared_text(self, request: IncidentInput) -> str:
        cadence = _minutes(self.settings.update_cadence[self.severity])
        return (f"🚨 PRODUCTION INCIDENT DECLARED 🚨\n\nService: {request.service}\nSeverity: {self.severity}\n"
                f"Time: {self.milestones.started:%Y-%m-%d %H:%M:%S} UTC\nImpact: {request.reason}\nRule: {self.rule}\n\n"
                f"Investigation in progress. Next update in {cadence}.\n\nOn-call: not acknowledged yet "
                f"(`rollback ack {incident_id(request.service)} --as NAME`)")
