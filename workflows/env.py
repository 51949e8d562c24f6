"""Environment rollback (runbook 000, "Environment Variable Rollback"): what changed in a
service's environment since its last good deployment, and putting that environment back.

Values never pass through here: snapshots carry names, keyed hashes and a reference to the
values in the worker's protected store (activities/envstore.py).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from workflows.base import (CHANGE_RETRY, READ_RETRY, RollbackWorkflowBase, bounded_timeline, cause_message,
                                guarded)
    from workflows.models import (
        EnvDiff,
        EnvReadRequest,
        EnvRestoreInput,
        EnvRestoreResult,
        EnvSetRequest,
        EnvSetResult,
        EnvSnapshot,
        EnvSnapshotRequest,
        EventKind,
        HealthSnapshot,
        Outcome,
        Phase,
        PostmortemRequest,
        ServiceContext,
        ServiceRef,
    )
    from workflows.policy import approval_needed

ENV_PROVIDERS = ("vercel", "docker", "compose")
# Setting variables and redeploying (a Vercel build, a container recreate) heartbeat every few seconds.
ENV_SET = dict(start_to_close_timeout=timedelta(minutes=10), heartbeat_timeout=timedelta(seconds=15))
QUICK = dict(start_to_close_timeout=timedelta(seconds=60), retry_policy=READ_RETRY)


def diff_env(base: EnvSnapshot | None, current: EnvSnapshot) -> EnvDiff:
    """Names added, removed and changed between two snapshots (by hash: values are never here)."""
    if base is None:
        return EnvDiff(service=current.service, current=current, message="no earlier healthy deployment's "
                       "environment is recorded yet; this one is recorded now")
    added = sorted(set(current.hashes) - set(base.hashes))
    removed = sorted(set(base.hashes) - set(current.hashes))
    changed = sorted(n for n in set(base.hashes) & set(current.hashes)
                     if base.hashes[n] != current.hashes[n] or base.hashes[n] == "unreadable")
    parts = [f"{len(x)} {what}" for x, what in ((added, "added"), (removed, "removed"), (changed, "changed")) if x]
    since = f"since {base.label or base.deployment} ({base.taken_at:%Y-%m-%d %H:%M} UTC)"
    return EnvDiff(service=current.service, base=base, current=current, added=added, removed=removed,
                   changed=changed, message=(", ".join(parts) if parts else "no change") + f" {since}")


def env_provider(context: ServiceContext) -> str:
    provider = context.config.app.provider
    if provider not in ENV_PROVIDERS:
        raise ApplicationError(
            f"service {context.service!r} deploys with {provider}, which has no environment API here; environment "
            f"rollback supports {', '.join(ENV_PROVIDERS)} (config files: `rollback config revert`)",
            type="EnvNotSupported", non_retryable=True)
    return provider


async def capture_environment(service: str, provider: str, reason: str) -> tuple[HealthSnapshot, EnvSnapshot]:
    """Health, then the environment running now (values into the protected store: the way back).
    Shared by env restore and key rotation."""
    health = await workflow.execute_activity("health.assess", ServiceRef(service=service),
                                             result_type=HealthSnapshot, **QUICK)
    snapshot = await workflow.execute_activity(
        f"{provider}.env_read", EnvReadRequest(service=service, reason=reason, healthy=health.healthy),
        result_type=EnvSnapshot, **QUICK)
    return health, snapshot


@workflow.defn
class EnvDiffWorkflow:
    """Record the environment the serving deployment runs with and compare it with the last good
    one. Read-only for the service; a deploy pipeline runs it after each deploy so every deploy
    is recorded (healthy or not, from the health check)."""

    @workflow.run
    async def run(self, request: ServiceRef) -> EnvDiff:
        context = await workflow.execute_activity("config.service", request, result_type=ServiceContext, **QUICK)
        provider = env_provider(context)
        health = await workflow.execute_activity("health.assess", request, result_type=HealthSnapshot, **QUICK)
        current = await workflow.execute_activity(
            f"{provider}.env_read", EnvReadRequest(service=request.service, reason="rollback env diff",
                                                   healthy=health.healthy), result_type=EnvSnapshot, **QUICK)
        base = await workflow.execute_activity(
            "env.last_good", EnvSnapshotRequest(service=request.service, current=current.deployment),
            result_type=EnvSnapshot | None, **QUICK)
        return diff_env(base, current)


@workflow.defn
class EnvRollbackWorkflow(RollbackWorkflowBase):
    """Put back the environment a recorded deployment ran with: capture the current one, plan,
    approval (as the app rollback policy says), set the variables and redeploy, verify; on a
    failed verification set the replaced values back and redeploy again."""

    rollback_type = "env"
    locks = ("service",)

    @workflow.run
    @guarded
    async def run(self, request: EnvRestoreInput) -> EnvRestoreResult:
        self.start_run(request.service, request.severity)
        self.record(EventKind.STARTED, f"environment rollback of {request.service} to "
                    f"{request.to or 'the last good deployment'}: {request.reason}", actor=request.requested_by,
                    dry_run=request.dry_run)
        context = await self.service_context(request.service)
        provider = env_provider(context)
        result = EnvRestoreResult(service=request.service, outcome="failed", artifact_dir=context.artifact_dir)

        # 1. Assess and capture what runs now (its values go to the protected store: the way back)
        health, current = await capture_environment(request.service, provider, "captured before env restore")
        self.record(EventKind.CAPTURED, f"{current.label or current.deployment} runs with {len(current.hashes)} "
                    "variables (recorded: names and hashes here, values in the protected store)",
                    health="healthy" if health.healthy else health.problem or "unhealthy")

        # 2. Plan: which names go back to which recorded values
        self.enter(Phase.PLANNING)
        target = await workflow.execute_activity(
            "env.snapshot", EnvSnapshotRequest(service=request.service, deployment=request.to,
                                               current=current.deployment), result_type=EnvSnapshot, **QUICK)
        result.diff = diff = diff_env(target, current)
        unreadable = sorted(n for n, h in target.hashes.items() if h == "unreadable")
        to_set = sorted(n for n in diff.changed + diff.removed if n not in unreadable)
        to_remove = list(diff.added)
        self.record(EventKind.PLANNED, f"put back the environment of {target.label or target.deployment}: "
                    f"set {', '.join(to_set) or 'nothing'}; remove {', '.join(to_remove) or 'nothing'}; then "
                    f"{'redeploy' if provider == 'vercel' else 'recreate the container'} and verify",
                    set=to_set, remove=to_remove, unreadable=unreadable)
        if unreadable:
            self.record(EventKind.DECIDED, f"left as they are: {', '.join(unreadable)} (sensitive values Vercel never "
                        "returns, and not set through this system)")
        if not to_set and not to_remove:
            self.record(EventKind.RESOLVED, "the environment already matches; nothing to do")
            return await self._finish(result, "nothing_to_do", f"{request.service} already runs with the environment "
                                      f"of {target.label or target.deployment}")
        if request.dry_run:
            self.record(EventKind.RESOLVED, "dry run: nothing was changed")
            return await self._finish(result, "dry_run", f"dry run: would set {len(to_set)} and remove "
                                      f"{len(to_remove)} variables; nothing was changed")

        # 3. Approval, as the policy asks of a manual app rollback
        policy = context.config.policy
        if approval_needed(policy.app_approval, automatic=False):
            outcome = await self.ask("env restore", f"set {', '.join(to_set) or 'nothing'} and remove "
                                     f"{', '.join(to_remove) or 'nothing'} as of {target.label or target.deployment}, "
                                     "then redeploy", request.approval_timeout)
            if outcome:
                return await self._finish(result, outcome, f"environment rollback {outcome}; nothing was changed")

        # 4. Set and redeploy; the way back (the captured values) is known before anything changes
        self.enter(Phase.EXECUTING)
        key = f"{workflow.info().workflow_id}/{workflow.info().run_id}"
        try:
            applied = await workflow.execute_activity(
                f"{provider}.env_set", EnvSetRequest(service=request.service, ref=target.ref, names=to_set,
                                                     remove=to_remove, change_key=key),
                result_type=EnvSetResult, retry_policy=CHANGE_RETRY, **ENV_SET)
            result.deployment = applied.deployment
            self.record(EventKind.ROLLED_BACK, f"variables set ({', '.join(applied.set) or 'none changed'}), removed "
                        f"({', '.join(applied.removed) or 'none'}); {applied.deployment} serves them")
            # 5. Verify
            self.enter(Phase.VERIFYING)
            verdict = await self.verify_app(request.service, context.config.health,
                                            applied.details.get("expected_version"))
            if not verdict.passed:
                self.record(EventKind.VERIFICATION_FAILED, verdict.problem)
                raise ApplicationError(f"verification after the environment restore failed: {verdict.problem}",
                                       type="VerificationFailed", non_retryable=True)
            self.record(EventKind.VERIFIED, f"{context.config.health.consecutive_checks} consecutive healthy checks")
        except BaseException as exc:  # cancellation puts the values back too
            why = "cancelled" if isinstance(exc, asyncio.CancelledError) else cause_message(exc)
            await self._undo(request.service, provider, current, to_set, to_remove, key, why)
            message = (f"environment rollback of {request.service} failed and was undone: {why}. The variables "
                       f"are back as {current.label or current.deployment} had them; look at {context.artifact_dir} "
                       "before trying another deployment's environment.")
            await self._postmortem(result, "compensated", message)
            raise ApplicationError(message, type="RollbackCompensated", non_retryable=True) from exc

        # 6. Record the restored environment as good, report
        restored = await workflow.execute_activity(
            f"{provider}.env_read", EnvReadRequest(service=request.service, reason="restored and verified",
                                                   healthy=True), result_type=EnvSnapshot, **QUICK)
        self.record(EventKind.RESOLVED, f"{request.service} runs with the environment of "
                    f"{target.label or target.deployment} again ({restored.deployment}, recorded as good)")
        await self.notify(f"{request.service}: environment rolled back to {target.label or target.deployment} "
                          f"({len(to_set)} set, {len(to_remove)} removed)", key="resolved", reason=request.reason)
        return await self._finish(result, "rolled_back", f"environment of {target.label or target.deployment} "
                                  f"restored and verified on {restored.deployment}")

    async def _undo(self, service: str, provider: str, before: EnvSnapshot, to_set: list[str], to_remove: list[str],
                    key: str, why: str) -> None:
        """Every variable the restore touched back to its captured value: those it changed or
        removed are set again, those it added are removed; then redeploy."""
        self.enter(Phase.COMPENSATING)
        self.record(EventKind.COMPENSATING, f"putting the replaced values back: {why}")
        names = sorted(n for n in set(to_set) | set(to_remove) if n in before.hashes and before.hashes[n] != "unreadable")
        added = sorted(n for n in to_set if n not in before.hashes)
        try:
            undone = await workflow.execute_activity(
                f"{provider}.env_set", EnvSetRequest(service=service, ref=before.ref, names=names, remove=added,
                                                     change_key=f"undo:{key}"),
                result_type=EnvSetResult, retry_policy=CHANGE_RETRY, **ENV_SET)
        except ActivityError as exc:
            self.record(EventKind.FAILED, f"COMPENSATION FAILED, manual action needed: {cause_message(exc)}")
            self.enter(Phase.FAILED)
            await self.notify(f"{service}: environment rollback failed AND could not be undone: {cause_message(exc)}",
                              key="compensation-failed", escalation=True)
            raise ApplicationError(f"environment rollback of {service} failed ({why}) and putting the values back also "
                                   f"failed ({cause_message(exc)}): set them by hand", type="CompensationFailed",
                                   non_retryable=True) from exc
        self.record(EventKind.COMPENSATED, f"values of {', '.join(names) or 'nothing'} put back, "
                    f"{', '.join(added) or 'nothing'} removed; {undone.deployment} serves them")
        self.enter(Phase.FAILED)
        await self.notify(f"{service}: environment rollback failed and was undone: {why}", key="compensated")

    async def _finish(self, result: EnvRestoreResult, outcome: str, message: str) -> EnvRestoreResult:
        self.close(result, outcome, message, succeeded=Outcome.succeeded(outcome))
        if outcome != "dry_run":
            await self._postmortem(result, outcome, message)
        await self.finish_handlers()
        return result

    async def _postmortem(self, result: EnvRestoreResult, outcome: str, message: str) -> None:
        diff = result.diff
        summary = {"outcome": outcome, "message": message, "phase_seconds": dict(self.phase_seconds)}
        if diff is not None:
            summary.update({"restored from": diff.base.deployment if diff.base else "", "added since": diff.added,
                            "removed since": diff.removed, "changed since": diff.changed})
        await workflow.execute_activity(
            "capture.postmortem",
            PostmortemRequest(service=result.service, artifact_dir=result.artifact_dir or "",
                              title=f"Environment rollback of {result.service}: {outcome}", summary=summary,
                              timeline=bounded_timeline(self.events), alerts=self.top_alerts(100)),
            start_to_close_timeout=timedelta(seconds=30), retry_policy=READ_RETRY)
