"""Configuration rollback (runbook 000, "Configuration Rollback"): `vercel.json`,
`next.config.js` and the other configured files back to their content at a good commit, in one
commit in the service's repository, deployed like a git revert, verified, undone on failure."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from workflows.base import (CHANGE_RETRY, READ_RETRY, RollbackWorkflowBase, bounded_timeline, cause_message,
                                guarded)
    from workflows.models import (
        ConfigPlan,
        ConfigPlanRequest,
        ConfigRevertInput,
        ConfigRevertRequest,
        ConfigRevertResult,
        EventKind,
        ExecuteResult,
        Outcome,
        Phase,
        PostmortemRequest,
    )
    from workflows.policy import approval_needed

GIT_STEP = dict(start_to_close_timeout=timedelta(minutes=15), heartbeat_timeout=timedelta(seconds=10))


@workflow.defn
class ConfigRevertWorkflow(RollbackWorkflowBase):
    rollback_type = "config"
    locks = ("service",)

    @workflow.run
    @guarded
    async def run(self, request: ConfigRevertInput) -> ConfigRevertResult:
        self.start_run(request.service, request.severity)
        self.record(EventKind.STARTED, f"config revert of {request.service} to {request.to}: {request.reason}",
                    actor=request.requested_by, dry_run=request.dry_run)
        context = await self.service_context(request.service)
        config = context.config
        result = ConfigRevertResult(service=request.service, outcome="failed", artifact_dir=context.artifact_dir)
        if config.config_files is None:
            raise ApplicationError(f"service {request.service!r} has no config_files section (paths, and a git "
                                   "repository unless the app deploys from git); nothing was changed",
                                   type="ConfigError", non_retryable=True)

        # 1. Plan: which files differ from the good commit
        self.enter(Phase.PLANNING)
        result.plan = plan = await workflow.execute_activity(
            "git.config_plan", ConfigPlanRequest(service=request.service, commit=request.to, paths=request.paths),
            result_type=ConfigPlan, start_to_close_timeout=timedelta(minutes=2), retry_policy=READ_RETRY)
        self.record(EventKind.PLANNED, f"revert {', '.join(plan.changed) or 'nothing'} to {plan.commit[:10]} with one "
                    f"commit on top of {plan.head[:10]}, deploy, verify", changed=plan.changed)
        if not plan.changed:
            self.record(EventKind.RESOLVED, "the files already match that commit; nothing to do")
            return await self._finish(result, "nothing_to_do", f"{', '.join(plan.blobs)} already as at "
                                      f"{plan.commit[:10]}")
        if request.dry_run:
            self.record(EventKind.RESOLVED, "dry run: nothing was changed")
            return await self._finish(result, "dry_run", f"dry run: would revert {', '.join(plan.changed)}")

        # 2. Approval, as for a manual app rollback
        if approval_needed(config.policy.app_approval, automatic=False):
            outcome = await self.ask("config revert", f"revert {', '.join(plan.changed)} to {plan.commit[:10]} and "
                                     "deploy", request.approval_timeout)
            if outcome:
                return await self._finish(result, outcome, f"config revert {outcome}; nothing was changed")

        # 3. Commit, push, deploy; 4. verify; undo on failure
        self.enter(Phase.EXECUTING)
        key = f"{workflow.info().workflow_id}/{workflow.info().run_id}"
        revert = ConfigRevertRequest(service=request.service, plan=plan, change_key=key, reason=request.reason)
        try:
            done = await workflow.execute_activity("git.config_revert", revert, result_type=ExecuteResult,
                                                   retry_policy=CHANGE_RETRY, **GIT_STEP)
            result.commit = done.details["revert_commit"]
            self.record(EventKind.ROLLED_BACK, f"commit {result.commit[:10]} pushed; {done.details['deploy']}")
            self.enter(Phase.VERIFYING)
            # the version endpoint names the commit only where the app itself deploys from git
            expected = done.details["expected_version"] if config.app.provider == "git" else None
            verdict = await self.verify_app(request.service, config.health, expected)
            if not verdict.passed:
                self.record(EventKind.VERIFICATION_FAILED, verdict.problem)
                raise ApplicationError(f"verification after the config revert failed: {verdict.problem}",
                                       type="VerificationFailed", non_retryable=True)
            self.record(EventKind.VERIFIED, f"{config.health.consecutive_checks} consecutive healthy checks")
        except BaseException as exc:
            why = "cancelled" if isinstance(exc, asyncio.CancelledError) else cause_message(exc)
            await self._undo(revert, why)
            message = (f"config revert of {request.service} failed and was undone: {why}. The files are back as at "
                       f"{plan.head[:10]}; look at {context.artifact_dir} before trying another commit.")
            await self._postmortem(result, "compensated", message)
            raise ApplicationError(message, type="RollbackCompensated", non_retryable=True) from exc

        self.record(EventKind.RESOLVED, f"{', '.join(plan.changed)} back as at {plan.commit[:10]}")
        await self.notify(f"{request.service}: config files {', '.join(plan.changed)} reverted to {plan.commit[:10]}",
                          key="resolved", reason=request.reason)
        return await self._finish(result, "rolled_back", f"{', '.join(plan.changed)} reverted to {plan.commit[:10]} "
                                  f"in commit {result.commit[:10]}, deployed and verified")

    async def _undo(self, revert: ConfigRevertRequest, why: str) -> None:
        self.enter(Phase.COMPENSATING)
        self.record(EventKind.COMPENSATING, f"putting the config files back: {why}")
        try:
            undone = await workflow.execute_activity("git.config_undo", revert, result_type=ExecuteResult,
                                                     retry_policy=CHANGE_RETRY, **GIT_STEP)
        except ActivityError as exc:
            self.record(EventKind.FAILED, f"COMPENSATION FAILED, manual action needed: {cause_message(exc)}")
            self.enter(Phase.FAILED)
            await self.notify(f"{revert.service}: config revert failed AND could not be undone: {cause_message(exc)}",
                              key="compensation-failed", escalation=True)
            raise ApplicationError(f"config revert of {revert.service} failed ({why}) and undoing it also failed "
                                   f"({cause_message(exc)}): revert the commit by hand", type="CompensationFailed",
                                   non_retryable=True) from exc
        self.record(EventKind.COMPENSATED, "config files restored: " + ", ".join(
            f"{k} {str(v)[:10]}" for k, v in undone.details.items()))
        self.enter(Phase.FAILED)
        await self.notify(f"{revert.service}: config revert failed and was undone: {why}", key="compensated")

    async def _finish(self, result: ConfigRevertResult, outcome: str, message: str) -> ConfigRevertResult:
        self.close(result, outcome, message, succeeded=Outcome.succeeded(outcome))
        if outcome != "dry_run":
            await self._postmortem(result, outcome, message)
        await self.finish_handlers()
        return result

    async def _postmortem(self, result: ConfigRevertResult, outcome: str, message: str) -> None:
        plan = result.plan
        await workflow.execute_activity(
            "capture.postmortem",
            PostmortemRequest(service=result.service, artifact_dir=result.artifact_dir or "",
                              title=f"Config revert of {result.service}: {outcome}",
                              summary={"outcome": outcome, "message": message, "files": plan.changed if plan else [],
                                       "good commit": plan.commit if plan else "", "commit": result.commit or "",
                                       "phase_seconds": dict(self.phase_seconds)},
                              timeline=bounded_timeline(self.events), alerts=self.top_alerts(100)),
            start_to_close_timeout=timedelta(seconds=30), retry_policy=READ_RETRY)
