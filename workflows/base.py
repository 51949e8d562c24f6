"""What every rollback workflow shares: the timeline, phases, approvals and alert signals."""

from __future__ import annotations

import asyncio
import functools
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from workflows.config import HealthCheck, KillSwitch
    from workflows.models import (
        AlertNotice,
        ApprovalDecision,
        ApprovalInput,
        EventKind,
        FlagsRequest,
        NotifyRequest,
        Outcome,
        Phase,
        StatusPageRequest,
        RollbackStatus,
        ServiceContext,
        ServiceRef,
        TimelineEvent,
        VerifyRequest,
        VerifyResult,
    )

SERVICE_KEY = SearchAttributeKey.for_keyword("RollbackService")
TYPE_KEY = SearchAttributeKey.for_keyword("RollbackType")
SEVERITY_KEY = SearchAttributeKey.for_keyword("RollbackSeverity")
PHASE_KEY = SearchAttributeKey.for_keyword("RollbackPhase")
TRIGGER_KEY = SearchAttributeKey.for_keyword("RollbackTrigger")  # manual | automatic
SEARCH_ATTRIBUTES = (SERVICE_KEY, TYPE_KEY, SEVERITY_KEY, PHASE_KEY, TRIGGER_KEY)

# Reads and checks may retry freely; a step that changes production retries a bounded number
# of times (Temporal's default is forever) and never on errors marked non-retryable.
READ_RETRY = RetryPolicy(maximum_attempts=5, initial_interval=timedelta(seconds=1))
CHANGE_RETRY = RetryPolicy(maximum_attempts=3, initial_interval=timedelta(seconds=2))
# Dumps, restores and tars heartbeat every 2 s; a dead worker is noticed within the heartbeat timeout.
LONG_STEP = dict(start_to_close_timeout=timedelta(hours=6), heartbeat_timeout=timedelta(seconds=30))


def cause_message(exc: BaseException) -> str:
    """What went wrong, from the innermost cause: the activity's own message, without the
    "Activity task failed" wrapper or the error type in front."""
    while getattr(exc, "cause", None) is not None:
        exc = exc.cause
    return getattr(exc, "message", None) or str(exc)


def records_failure(run):
    """Wrap a workflow's run: whatever makes it fail, its timeline ends with a `failed` event that
    names the cause and its phase is FAILED, so `rollback status` says why (a cancellation
    ends with a `cancelled` event)."""

    @functools.wraps(run)
    async def run_recording_failure(self: "RollbackWorkflowBase", request):
        try:
            return await run(self, request)
        except asyncio.CancelledError:
            await self.switches_after_failure("the run was cancelled")
            self.record(EventKind.CANCELLED, "cancelled")
            raise
        except Exception as exc:
            recorded = bool(self.events) and self.events[-1].kind == EventKind.FAILED
            await self.switches_after_failure(cause_message(exc))
            if not recorded:
                self.record(EventKind.FAILED, cause_message(exc))
            if self.phase != Phase.FAILED and workflow.patched("failed-phase-on-failure"):
                self.enter(Phase.FAILED)
            raise

    return run_recording_failure


class RollbackWorkflowBase:
    """Timeline, phase, approval checkpoint and alert handling for one rollback run."""

    rollback_type = "rollback"

    def __init__(self) -> None:
        self.events: list[TimelineEvent] = []
        self.phase = Phase.ASSESSING
        self.service = ""
        self.awaiting_step: str | None = None
        self.decision: ApprovalDecision | None = None
        self.phase_started = None
        self.phase_seconds: dict[str, float] = {}
        self.resolved_alerts = 0
        # Kill switches set off by this run and not yet put back: their recorded values. Once the
        # live data was changed, putting them back is a person's call, never automatic.
        self.switches_off: dict[str, str | None] | None = None
        self.off_values: dict[str, str] = {}
        self.live_changed = False
        # A child of an incident leaves the public status page to the incident (one incident there).
        self.public_updates = True

    # -- the story --------------------------------------------------------------------------
    def record(self, kind: EventKind, message: str, actor: str = "workflow", **data: Any) -> None:
        self.events.append(TimelineEvent(at=workflow.now(), kind=kind, message=message, actor=actor, data=data))
        workflow.logger.info("%s: %s", kind.value, message)

    def start_run(self, service: str, severity: str, automatic: bool = False) -> None:
        self.service = service
        self.phase_started = workflow.now()
        workflow.upsert_search_attributes(
            [
                SERVICE_KEY.value_set(service),
                TYPE_KEY.value_set(self.rollback_type),
                SEVERITY_KEY.value_set(severity),
                PHASE_KEY.value_set(self.phase.value),
                TRIGGER_KEY.value_set("automatic" if automatic else "manual"),
            ]
        )

    def enter(self, phase: Phase) -> None:
        now = workflow.now()
        if self.phase_started is not None:
            elapsed = (now - self.phase_started).total_seconds()
            self.phase_seconds[self.phase.value] = self.phase_seconds.get(self.phase.value, 0.0) + elapsed
        self.phase, self.phase_started = phase, now
        workflow.upsert_search_attributes([PHASE_KEY.value_set(phase.value)])

    @workflow.query
    def status(self) -> RollbackStatus:
        return RollbackStatus(
            workflow=self.rollback_type,
            service=self.service,
            phase=self.phase,
            waiting_for_approval=self.awaiting_step,
            timeline=self.events,
        )

    # -- approvals --------------------------------------------------------------------------
    def _validate_decision(self, decision: ApprovalInput) -> None:
        self._refuse_second_decision()
        if self.awaiting_step is None:
            raise ValueError("this rollback is not waiting for an approval")
        if not decision.approver.strip():
            raise ValueError("an approver identity is required")
        if not decision.reason.strip():
            raise ValueError("a reason is required")

    def _refuse_second_decision(self) -> None:
        if self.decision is not None:
            taken = "approved" if self.decision.approved else "rejected"
            raise ApplicationError(f"{self.decision.step} was already {taken} by {self.decision.approver} "
                                   f"({self.decision.reason}); your decision was not recorded", type="AlreadyDecided")

    def _decide(self, decision: ApprovalInput, approved: bool) -> ApprovalDecision:
        # Two Updates delivered in one workflow task both pass the validator before either handler
        # runs, so the handler checks again, first and synchronously: one decision per approval.
        if workflow.patched("one-decision-per-approval"):
            self._refuse_second_decision()
        self.decision = ApprovalDecision(
            step=self.awaiting_step or "",
            approved=approved,
            approver=decision.approver,
            reason=decision.reason,
            at=workflow.now(),
        )
        kind = EventKind.APPROVED if approved else EventKind.REJECTED
        self.record(kind, f"{self.decision.step}: {kind.value} ({decision.reason})", actor=decision.approver)
        return self.decision

    @workflow.update
    def approve(self, decision: ApprovalInput) -> ApprovalDecision:
        return self._decide(decision, approved=True)

    @approve.validator
    def _check_approve(self, decision: ApprovalInput) -> None:
        self._validate_decision(decision)

    @workflow.update
    def reject(self, decision: ApprovalInput) -> ApprovalDecision:
        return self._decide(decision, approved=False)

    @reject.validator
    def _check_reject(self, decision: ApprovalInput) -> None:
        self._validate_decision(decision)

    @workflow.signal
    def alert(self, notice: AlertNotice) -> None:
        """Further alerts for this incident land on the timeline instead of starting rollbacks."""
        if notice.status == "resolved":
            self.resolved_alerts += 1
        self.record(
            EventKind.SIGNAL,
            f"{notice.status} alert from {notice.source}: {notice.summary}".rstrip(": "),
            actor=notice.source,
            fingerprint=notice.fingerprint,
        )

    async def _best_effort(self, activity_name: str, request, result_type, what: str) -> object | None:
        """Tell people; a failed notice is recorded, never a reason to stop a rollback."""
        try:
            return await workflow.execute_activity(
                activity_name, request, result_type=result_type,
                start_to_close_timeout=timedelta(seconds=30), retry_policy=RetryPolicy(maximum_attempts=3),
            )
        except Exception as exc:  # noqa: BLE001 - reported on the timeline instead
            self.record(EventKind.NOTIFIED, f"{what} failed: {exc}")
            return None

    async def notify(self, text: str, key: str, escalation: bool = False, **fields: str) -> None:
        request = NotifyRequest(service=self.service, key=f"{workflow.info().workflow_id}:{key}", text=text,
                                fields=fields, escalation=escalation)
        if await self._best_effort("notify.slack", request, bool, "Slack notification"):
            self.record(EventKind.NOTIFIED, f"Slack: {text}")

    async def status_page(self, status: str, body: str, impact: str = "minor") -> None:
        """One public incident per run, moved through investigating/identified/resolved."""
        if not self.public_updates:
            return
        info = workflow.info()
        request = StatusPageRequest(service=self.service, key=f"{info.workflow_id}/{info.run_id}",
                                    name=f"{self.service}: degraded service", status=status, body=body, impact=impact)
        incident = await self._best_effort("statuspage.post", request, str, "status page update")
        if incident:
            self.record(EventKind.NOTIFIED, f"status page incident {incident}: {status}")

    async def wait_for_approval(self, step: str, summary: str, timeout: timedelta) -> ApprovalDecision | None:
        """Block until someone approves or rejects `step`.

        On timeout it escalates (timeline + escalation notice) and waits one more period; after
        that it returns None and the caller must not proceed.
        """
        self.awaiting_step, self.decision = step, None
        previous_phase = self.phase
        self.enter(Phase.AWAITING_APPROVAL)
        self.record(EventKind.APPROVAL_REQUESTED, f"{step}: {summary}", timeout=str(timeout))
        await self.notify(f"Approval needed for {self.service}: {step}. {summary}", key=f"approval:{step}")
        try:
            for round_ in range(2):
                try:
                    await workflow.wait_condition(lambda: self.decision is not None, timeout=timeout)
                    return self.decision
                except asyncio.TimeoutError:
                    if round_ == 0:
                        self.record(EventKind.ESCALATED, f"no decision on {step} after {timeout}; escalating")
                        await self.notify(
                            f"ESCALATION: {self.service} rollback waits for approval of {step} since {timeout}",
                            key=f"escalation:{step}",
                            escalation=True,
                        )
            self.record(EventKind.FAILED, f"no decision on {step} after escalation; nothing was changed")
            return None
        finally:
            self.awaiting_step = None
            self.enter(previous_phase)

    # -- the app: health and kill switches -------------------------------------------------------
    async def verify_app(self, service: str, check: HealthCheck, expected_version: str | None = None) -> VerifyResult:
        """N consecutive healthy checks (and the expected version, when given)."""
        probe_seconds = check.interval_seconds + 2 * check.timeout_seconds
        return await workflow.execute_activity(
            "health.verify", VerifyRequest(service=service, expected_version=expected_version),
            result_type=VerifyResult, start_to_close_timeout=timedelta(seconds=check.consecutive_checks * 3 * probe_seconds + 60),
            heartbeat_timeout=timedelta(seconds=max(30, 3 * probe_seconds)), retry_policy=RetryPolicy(maximum_attempts=2))

    async def set_switches(self, service: str, values: dict[str, str | None]) -> None:
        await workflow.execute_activity("flags.set", FlagsRequest(service=service, values=values),
                                        start_to_close_timeout=timedelta(minutes=1), retry_policy=CHANGE_RETRY)

    async def stop_processing(self, service: str, switches: list[KillSwitch]) -> dict[str, str | None]:
        """Runbook 001's "stop processing": the switches' values go into history first, so they can
        be put back exactly; then each is set to its off value. Returns the recorded values."""
        if not switches:
            return {}
        previous = await workflow.execute_activity(
            "flags.read", ServiceRef(service=service), result_type=dict[str, str | None],
            start_to_close_timeout=timedelta(minutes=1), retry_policy=READ_RETRY)
        try:
            await self.set_switches(service, {s.name: s.off_value for s in switches})
        except ActivityError as exc:
            await self.set_switches(service, previous)
            raise ApplicationError(f"could not stop processing ({cause_message(exc)}); the switches were put back "
                                   "and nothing else was changed", non_retryable=True) from None
        self.switches_off, self.off_values = previous, {s.name: s.off_value for s in switches}
        self.record(EventKind.EXECUTING, "processing stopped: " + ", ".join(f"{s.name}={s.off_value}" for s in switches),
                    previous=previous)
        return previous

    async def switches_after_failure(self, why: str) -> None:
        """A run that fails or is cancelled while processing is stopped: the switches go back when
        the live data is untouched, else (or when that fails) an escalation names them."""
        if self.switches_off is None or not workflow.patched("switches-never-silently-off"):
            return
        try:
            if not self.live_changed:
                await self.start_processing(self.service, self.switches_off)
                return
            # a flags table inside a restored database holds the backup's values: off again
            await self.set_switches(self.service, self.off_values)
        except ActivityError as exc:
            why = f"{why}; setting the switches failed too: {cause_message(exc)}"
        await self.leave_processing_stopped(why)

    async def leave_processing_stopped(self, why: str) -> None:
        """End with the switches still off, said loudly: on the timeline and to the escalation channel."""
        if self.switches_off is None or not workflow.patched("switches-never-silently-off"):
            return
        names = ", ".join(f"{name} (was {value if value is not None else 'not set'})"
                          for name, value in self.switches_off.items())
        self.switches_off = None
        message = (f"processing stays stopped: kill switches {names} are still off because {why}; set them back "
                   "once the app and the data are checked")
        self.record(EventKind.ESCALATED, message)
        await self.notify(f"ESCALATION: {self.service}: {message}", key="switches-left-off", escalation=True)

    async def start_processing(self, service: str, previous: dict[str, str | None]) -> bool:
        """Every switch back to its recorded value ("not set" included)."""
        if not previous:
            return False
        await self.set_switches(service, previous)
        self.switches_off = None
        self.record(EventKind.EXECUTING, "processing started again: kill switches back to " + ", ".join(
            f"{k}={v if v is not None else '(not set)'}" for k, v in previous.items()))
        return True

    async def ask(self, step: str, summary: str, timeout: timedelta) -> str | None:
        """Wait for a decision on `step`: None when approved, else the outcome to end with."""
        decision = await self.wait_for_approval(step, summary, timeout)
        if decision is None:
            return "not_approved"
        return None if decision.approved else "rejected"

    async def service_context(self, service: str) -> ServiceContext:
        """The service's config (secret names only) and this run's artifact directory."""
        return await workflow.execute_activity(
            "config.service", ServiceRef(service=service), result_type=ServiceContext,
            start_to_close_timeout=timedelta(seconds=30), retry_policy=READ_RETRY)

    def close(self, result, outcome: str, message: str, succeeded: bool):
        """Mark the final phase and fill the fields every result model has."""
        self.enter(Phase.DONE if succeeded else Phase.FAILED)
        result.outcome, result.message = outcome, message
        result.phase_seconds = dict(self.phase_seconds)
        result.timeline = list(self.events)
        return result

    async def backup_step(self, service: str, story: str, activity: str, argument, result_type):
        """The one long step of a backup run (database dump, base backup, volume tar)."""
        self.start_run(service, "P3")
        self.record(EventKind.STARTED, story)
        self.enter(Phase.EXECUTING)
        return await workflow.execute_activity(activity, argument, result_type=result_type, retry_policy=CHANGE_RETRY,
                                               **LONG_STEP)

    async def done(self, value):
        self.enter(Phase.DONE)
        await self.finish_handlers()
        return value

    async def finish(self, result, outcome: str, message: str):
        """Close the run (DONE for a successful outcome, else FAILED), let running approve/reject
        handlers finish, and return the result."""
        self.close(result, outcome, message, succeeded=Outcome.succeeded(outcome))
        await self.finish_handlers()
        return result

    async def finish_handlers(self) -> None:
        await workflow.wait_condition(workflow.all_handlers_finished)
