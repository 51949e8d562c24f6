"""What every rollback workflow shares: the timeline, phases, approvals and alert signals."""

from __future__ import annotations

import asyncio
import functools
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from workflows.approvals import STEP_KIND, refusal
    from workflows.config import HealthCheck, KillSwitch
    from workflows.models import (
        AuditBatch,
        AuditEntry,
        ApproverRules,
        AlertBatch,
        AlertCount,
        AlertNotice,
        ApprovalDecision,
        ApprovalInput,
        EventKind,
        FlagsRequest,
        LockHolder,
        LockRelease,
        LockRequest,
        LockResult,
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


# What the status query, the result and the post-mortem input carry of a long timeline: the
# first and the last events, so an alert storm can never push them towards the 2 MB payload limit.
TIMELINE_HEAD, TIMELINE_TAIL = 50, 150
# Distinct alert fingerprints a run keeps counts for; beyond that they are only counted.
MAX_DISTINCT_ALERTS = 1000
TOP_ALERTS = 20
FEW_ALERTS = 3  # a batch this small gets one timeline event per alert


def bounded_timeline(events: list[TimelineEvent]) -> list[TimelineEvent]:
    if len(events) <= TIMELINE_HEAD + TIMELINE_TAIL:
        return list(events)
    skipped = len(events) - TIMELINE_HEAD - TIMELINE_TAIL
    marker = TimelineEvent(at=events[TIMELINE_HEAD].at, kind=EventKind.SIGNAL,
                           message=f"... {skipped} events omitted here (the first {TIMELINE_HEAD} and the last "
                                   f"{TIMELINE_TAIL} are shown) ...")
    return [*events[:TIMELINE_HEAD], marker, *events[-TIMELINE_TAIL:]]


def cause_message(exc: BaseException) -> str:
    """What went wrong, from the innermost cause: the activity's own message, without the
    "Activity task failed" wrapper or the error type in front."""
    while getattr(exc, "cause", None) is not None:
        exc = exc.cause
    return getattr(exc, "message", None) or str(exc)


def guarded(run):
    """Wrap a workflow's run: take the service's lock first (a top-level run that may change
    something; children run under their parent's), release it on every ending, and whatever makes
    the run fail, end its timeline with a `failed` event that names the cause and phase FAILED, so
    `rollback status` says why (a cancellation ends with a `cancelled` event)."""

    @functools.wraps(run)
    async def guarded_run(self: "RollbackWorkflowBase", request):
        self.requested_by = getattr(request, "requested_by", "unknown")
        ending = "ended"
        try:
            self.local_reads = workflow.patched("sequential-local-reads")
            await self.take_lock(request)
            self.audit("started", actor=self.requested_by, reason=getattr(request, "reason", ""),
                       service=getattr(request, "service", ""), dry_run=getattr(request, "dry_run", False))
            # written at the first checkpoint or the end, with the rest: an activity here would
            # delay the first step (the incident's clock starts there)
            return await run(self, request)
        except asyncio.CancelledError:
            await self.switches_after_failure("the run was cancelled")
            self.record(EventKind.CANCELLED, "cancelled")
            ending = "cancelled"
            raise
        except Exception as exc:
            # the workflow's own error says what happened and what to do; an activity's or a
            # child's is read from its innermost cause
            why = exc.message if isinstance(exc, ApplicationError) else cause_message(exc)
            recorded = bool(self.events) and self.events[-1].kind == EventKind.FAILED
            await self.switches_after_failure(why)
            if not recorded:
                self.record(EventKind.FAILED, why)
            if self.phase != Phase.FAILED and workflow.patched("failed-phase-on-failure"):
                self.enter(Phase.FAILED)
            ending = "failed"
            raise
        finally:
            self.audit(ending, phase=self.phase.value)
            await self.flush_audit()
            await self.release_lock()

    return guarded_run


async def all_settled(*steps) -> list:
    """Every step's result once all of them have ended; a failure is raised after the others are
    done, never with one still running."""
    outcomes = await asyncio.gather(*steps, return_exceptions=True)
    failed = next((o for o in outcomes if isinstance(o, BaseException)), None)
    if failed is not None:
        raise failed
    return outcomes


async def _as_activity_failure(name: str, running):
    """A local activity's result; its failure raised as a regular activity's is (ActivityError,
    the activity's own error as its cause): the SDK raises a local one's bare, and the callers, the
    failure converter and whoever reads the run's failure expect one shape."""
    try:
        return await running
    except ActivityError:
        raise
    except FailureError as exc:  # its error, a timeout, a cancellation
        raise ActivityError("Activity task failed", scheduled_event_id=0, started_event_id=0, identity="",
                            activity_type=name, activity_id="", retry_state=None) from exc


class RollbackWorkflowBase:
    """Timeline, phase, approval checkpoint and alert handling for one rollback run."""

    rollback_type = "rollback"
    # What a run of this workflow holds while it may change things: the service, its database.
    locks: tuple[str, ...] = ()

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
        self.held: LockRelease | None = None
        self.local_reads = False  # decided at the start of the run (guarded): see `read`
        self.alert_counts: dict[str, AlertCount] = {}
        self.alerts_received = 0
        # A child of an incident leaves the public status page to the incident (one incident there).
        self.public_updates = True
        # The approver policy (from the config, at the start) and what the checkpoint asks of it.
        self.requested_by = "unknown"
        self.approvers: ApproverRules | None = None
        self.policy_loaded = False  # set by service_context; a checkpoint loads it if a run did not
        self.awaiting_kinds: list[str] = []
        self.approvers_needed = 1
        self.approvals_given: list[str] = []
        self.audit_pending: list[AuditEntry] = []
        self.audit_writes: list[asyncio.Future] = []
        self.audit_count = 0

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
            timeline=bounded_timeline(self.events),
            alerts_received=self.alerts_received,
            alerts_distinct=len(self.alert_counts),
            top_alerts=self.top_alerts(TOP_ALERTS),
        )

    def top_alerts(self, limit: int) -> list[AlertCount]:
        return sorted(self.alert_counts.values(), key=lambda a: (-a.count, a.fingerprint))[:limit]

    def count_alert(self, item: AlertCount) -> bool:
        """Merge one alert (or a batch's count of it) into this run's tally; True when it is new."""
        self.alerts_received += item.count
        known = self.alert_counts.get(item.fingerprint)
        if known is None:
            if len(self.alert_counts) >= MAX_DISTINCT_ALERTS:
                return False  # counted in alerts_received only
            self.alert_counts[item.fingerprint] = item.model_copy()
            return True
        known.count += item.count
        known.status, known.summary = item.status, item.summary or known.summary
        known.last_seen = item.last_seen or known.last_seen
        return False

    # -- one change at a time per service and database ----------------------------------------
    async def take_lock(self, request, kinds: list[str] | None = None) -> None:
        """Hold the service's (and its database's) lock for this run, or fail naming the holder.
        A dry run changes nothing and a child runs under its parent's lock: neither takes it.
        `kinds`: more locks for a run that already holds its own (held until its end too)."""
        if kinds is not None:
            if self.held is None:  # no lock of its own (a child, a dry run): runs under its parent's
                return
        elif (not self.locks or getattr(request, "dry_run", False) or workflow.info().parent is not None
                or not workflow.patched("resource-lock")):
            return
        info = workflow.info()
        me = LockHolder(workflow_id=info.workflow_id, run_id=info.run_id, workflow_type=info.workflow_type)
        result = await self.read(
            "locks.acquire", LockRequest(service=request.service, kinds=kinds or list(self.locks), holder=me),
            LockResult, timeout=60)
        if not result.granted:
            holder = result.holder
            why = (f"{result.busy} is locked by {holder.workflow_type} {holder.workflow_id} (run {holder.run_id}): one "
                   f"change at a time; see `rollback status {holder.workflow_id}`, wait for it to end or cancel it")
            if workflow.patched("locked-run-tells-people"):
                # an alert's incident refused here (a migration rollback waiting an hour for its
                # approval holds the lock) must not fail where nobody looks: listed under its
                # service, and said on Slack's escalation channel
                workflow.upsert_search_attributes([SERVICE_KEY.value_set(request.service),
                                                   TYPE_KEY.value_set(self.rollback_type)])
                self.service = request.service
                await self.notify(f"ESCALATION: {info.workflow_type} {info.workflow_id} for {request.service} did "
                                  f"not start: {why}", key="locked", escalation=True)
            raise ApplicationError(why, type="Locked", non_retryable=True)
        held = self.held.resources if self.held is not None else []
        self.held = LockRelease(resources=sorted({*held, *result.resources}), holder=me)

    def read(self, name: str, argument, result_type, *, timeout: int = 60):
        """A quick, repeatable step on the way to the first change (take a lock, read the config,
        the health, what is serving): a local activity, run by this worker inside the workflow task.
        Each regular activity costs a round trip through the server (a task to dispatch, then a
        workflow task to resume): 30-50 ms each between an alert and the rollback call. A worker
        that dies mid-read loses the workflow task and the next one reads again. Runs that started
        before this change keep their regular activities (replay).

        Local reads are awaited one at a time, never side by side (`local_reads` turns the callers'
        gathers off): on replay the SDK hands a local activity its recorded result as soon as it is
        asked for, not when it arrived, so local reads in concurrent tasks can be numbered in
        another order than in the run that recorded them, a nondeterminism error (seen with the
        capture and the env read when a read outlasted its workflow task)."""
        if self.local_reads:
            return _as_activity_failure(name, workflow.execute_local_activity(
                name, argument, result_type=result_type, start_to_close_timeout=timedelta(seconds=timeout),
                retry_policy=READ_RETRY))
        return workflow.execute_activity(name, argument, result_type=result_type,
                                         start_to_close_timeout=timedelta(seconds=timeout), retry_policy=READ_RETRY)

    async def release_lock(self) -> None:
        if self.held is None:
            return
        held, self.held = self.held, None
        await workflow.execute_activity("locks.release", held, start_to_close_timeout=timedelta(minutes=1),
                                        retry_policy=READ_RETRY)

    # -- approvals --------------------------------------------------------------------------
    def _validate_decision(self, decision: ApprovalInput) -> None:
        self._refuse_second_decision()
        if self.awaiting_step is None:
            raise ValueError("this rollback is not waiting for an approval")
        if decision.step and decision.step != self.awaiting_step:
            raise ValueError(f"this decision is for {decision.step!r}, but the run now waits for "
                             f"{self.awaiting_step!r}: look at it (`rollback status`) before deciding")
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
        step = self.awaiting_step or ""
        # The approver policy is applied here, in the handler, and not in the validator: a
        # validator's refusal leaves no trace in history, and a refused attempt must be on the
        # timeline (and from there in the audit log). The price is that a refused Update is
        # accepted into history (one event pair), which only someone Temporal's own authorization
        # lets send Updates can cause. Nothing else changes: no decision is taken.
        why = refusal(self.approvers, self.awaiting_kinds, decision.approver, self.requested_by, approved,
                      self.approvals_given)
        if why is not None:
            self.record(EventKind.REFUSED, f"{step}: {'approval' if approved else 'rejection'} by "
                        f"{decision.approver} refused: {why}", actor=decision.approver, channel=decision.channel)
            self.audit("refused", actor=decision.approver, channel=decision.channel, step=step,
                       reason=decision.reason, why=why, decision="approve" if approved else "reject")
            raise ApplicationError(why, type="NotAllowed", non_retryable=True)
        self.audit("approved" if approved else "rejected", actor=decision.approver, channel=decision.channel,
                   step=step, reason=decision.reason, slack_user=decision.slack_user)
        if approved and len(self.approvals_given) + 1 < self.approvers_needed:
            # one of several approvers (a P0 restore): recorded, the checkpoint waits for the rest
            self.approvals_given.append(decision.approver)
            count = len(self.approvals_given)
            self.record(EventKind.APPROVED, f"{step}: approval {count} of {self.approvers_needed} "
                        f"({decision.reason}); waiting for another approver", actor=decision.approver,
                        channel=decision.channel)
            return ApprovalDecision(step=step, approved=True, approver=decision.approver, reason=decision.reason,
                                    at=workflow.now(), still_needed=self.approvers_needed - count)
        self.decision = ApprovalDecision(
            step=step,
            approved=approved,
            approver=decision.approver,
            reason=decision.reason,
            at=workflow.now(),
        )
        kind = EventKind.APPROVED if approved else EventKind.REJECTED
        self.record(kind, f"{self.decision.step}: {kind.value} ({decision.reason})", actor=decision.approver,
                    channel=decision.channel)
        return self.decision

    def audit(self, event: str, actor: str = "", channel: str = "workflow", step: str = "", reason: str = "",
              service: str = "", **detail) -> None:
        """Queue one audit line; `flush_audit` writes the queue through an activity (workflows
        cannot write files), at the start, after each checkpoint and at the end."""
        info = workflow.info()
        self.audit_count += 1
        self.audit_pending.append(AuditEntry(
            id=f"{info.workflow_id}/{info.run_id}/{self.audit_count}", at=workflow.now(), event=event,
            service=service or self.service, workflow_id=info.workflow_id, run_id=info.run_id,
            workflow_type=info.workflow_type, actor=actor, channel=channel, step=step, reason=reason,
            detail={k: v for k, v in detail.items() if v not in (None, "")}))

    async def flush_audit(self, wait: bool = True) -> None:
        """Write the queued audit lines. `wait=False` lets the run go on meanwhile (its start
        must not delay the first step); the end of the run waits for every write."""
        if self.audit_pending and workflow.patched("audit-log"):
            batch, self.audit_pending = AuditBatch(entries=self.audit_pending), []
            self.audit_writes.append(asyncio.ensure_future(
                self._best_effort("audit.append", batch, int, "audit log")))
        if wait and self.audit_writes:
            writes, self.audit_writes = self.audit_writes, []
            await asyncio.gather(*writes)

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
    def alerts(self, batch: AlertBatch) -> None:
        """Alerts the receiver collected while this run is open, counted per fingerprint. Only news
        goes on the timeline (a new fingerprint, a change of status): each on its own line when
        there are a few, one line for the lot in a storm; repeats only move the counts."""
        news = []
        for item in batch.items:
            known = self.alert_counts.get(item.fingerprint)
            before = known.status if known else None
            if self.count_alert(item) or (known is not None and before != item.status):
                news.append(item)
            if item.status == "resolved" and before != "resolved":
                self.resolved_alerts += 1
        self.alerts_received += batch.others
        if batch.others:
            self.record(EventKind.SIGNAL, f"{batch.others} more alert(s) with {batch.other_fingerprints} other "
                        "fingerprint(s) in this storm, counted only (the receiver keeps their details)",
                        alerts_received=self.alerts_received)
        if len(news) <= FEW_ALERTS:
            for item in news:
                self.record(EventKind.SIGNAL, f"{item.status} alert from {item.source}: {item.summary}".rstrip(": "),
                            actor=item.source, fingerprint=item.fingerprint)
            return
        sources = ", ".join(sorted({item.source for item in news}))
        resolved = sum(1 for item in news if item.status == "resolved")
        self.record(EventKind.SIGNAL, f"{len(news)} new or changed alert(s) from {sources} ({resolved} resolved); "
                    f"e.g. {news[0].status}: {news[0].summary}".rstrip(": "), actor=sources,
                    alerts_received=self.alerts_received, alerts_distinct=len(self.alert_counts))

    @workflow.signal
    def alert(self, notice: AlertNotice) -> None:
        """One alert (the one that started the run, or sent on its own), counted like a batch of one."""
        now = workflow.now()
        self.alerts(AlertBatch(items=[AlertCount(
            fingerprint=notice.fingerprint or f"{notice.source}:{notice.summary}", source=notice.source,
            status=notice.status, summary=notice.summary, first_seen=now, last_seen=now)]))

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

    async def notify(self, text: str, key: str, escalation: bool = False, buttons: str | None = None,
                     **fields: str) -> None:
        """`buttons`: an approval step; the message carries Approve / Reject buttons for it. Keyed
        by run: workflow IDs are reused per service, and a later run's messages are new ones."""
        info = workflow.info()
        request = NotifyRequest(service=self.service, key=f"{info.workflow_id}/{info.run_id}:{key}", text=text,
                                fields=fields, escalation=escalation,
                                approval_for=info.workflow_id if buttons else None, approval_step=buttons,
                                approval_run=info.run_id if buttons else None)
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

    async def wait_for_approval(self, step: str, summary: str, timeout: timedelta, kinds: list[str] | None = None,
                                approvers_needed: int = 1) -> ApprovalDecision | None:
        """Block until someone the approver policy admits approves or rejects `step` (of `kinds`,
        by default the step name's kind); `approvers_needed` distinct approvals make it approved.

        On timeout it escalates (timeline + escalation notice) and waits one more period; after
        that it returns None and the caller must not proceed.
        """
        if not self.policy_loaded and workflow.patched("policy-at-every-checkpoint"):
            # a run that never read its service's config (restore cleanup, migration repair) would
            # otherwise have no approver policy, and anyone could approve, the requester too
            await self.service_context(self.service)
        self.awaiting_step, self.decision = step, None
        self.awaiting_kinds = kinds or [STEP_KIND.get(step, "database")]
        self.approvers_needed, self.approvals_given = max(1, approvers_needed), []
        previous_phase = self.phase
        self.enter(Phase.AWAITING_APPROVAL)
        self.record(EventKind.APPROVAL_REQUESTED, f"{step}: {summary}", timeout=str(timeout),
                    **({"approvers_needed": self.approvers_needed} if self.approvers_needed > 1 else {}))
        await self.notify(f"Approval needed for {self.service}: {step}. {summary}", key=f"approval:{step}",
                          buttons=step)
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
            await self.flush_audit()

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

    async def ask(self, step: str, summary: str, timeout: timedelta, kinds: list[str] | None = None,
                  approvers_needed: int = 1) -> str | None:
        """Wait for a decision on `step`: None when approved, else the outcome to end with."""
        decision = await self.wait_for_approval(step, summary, timeout, kinds, approvers_needed)
        if decision is None:
            return "not_approved"
        return None if decision.approved else "rejected"

    def approval_only_from_a_parent(self, request) -> None:
        """`approved_by` in an input stands for a parent workflow's checkpoint (an incident's plan,
        a drill). A run no parent started ignores it, and says so: a start input from the UI or
        `temporal workflow start` cannot stand in for the approver policy."""
        if request.approved_by and workflow.info().parent is None and workflow.patched("approval-only-from-a-parent"):
            self.record(EventKind.DECIDED, f"approved_by {request.approved_by!r} in the input ignored: only a parent "
                        "workflow's checkpoint approves ahead; this run asks like any other", actor=request.approved_by)
            request.approved_by = None

    async def service_context(self, service: str) -> ServiceContext:
        """The service's config (secret names only), this run's artifact directory, and the
        approver policy its Update handlers enforce from now on."""
        context = await self.read("config.service", ServiceRef(service=service), ServiceContext, timeout=30)
        self.approvers, self.policy_loaded = context.approvers, True
        return context

    def close(self, result, outcome: str, message: str, succeeded: bool):
        """Mark the final phase and fill the fields every result model has."""
        self.enter(Phase.DONE if succeeded else Phase.FAILED)
        result.outcome, result.message = outcome, message
        result.phase_seconds = dict(self.phase_seconds)
        result.timeline = bounded_timeline(self.events)
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
