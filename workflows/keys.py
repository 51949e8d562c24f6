"""Key rotation (runbook 002, "Rotating Keys" and "API Key Compromise").

Rotation: capture the environment (the way back), create each new key by the provider's API or
wait for a person to hand over a reference to it, set the new keys in the deployment's
environment and redeploy once, verify the app and a provider test call with each new key, and
only then, after an approval, revoke the old keys. A failed verification puts the old values
back and redeploys; nothing is revoked. Compromised: revoke first (after approval), accept the
downtime, then create, set, redeploy and verify.

Key values never pass through here: names, provider key ids, shortened SHA-256 fingerprints and
store references only.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from workflows.base import CHANGE_RETRY, READ_RETRY, RollbackWorkflowBase, bounded_timeline, cause_message, guarded
    from workflows.env import ENV_SET, QUICK, capture_environment, env_provider
    from workflows.models import (
        EnvReadRequest,
        EnvSetRequest,
        EnvSetResult,
        EnvSnapshot,
        EventKind,
        KeyAdoptRequest,
        KeyCreateRequest,
        KeyMergeRequest,
        KeyPlanItem,
        KeyPlanRequest,
        KeyReference,
        KeyRevokeRequest,
        KeyRevokeResult,
        KeyRotationInput,
        KeyRotationResult,
        KeyTestRequest,
        KeyTestResult,
        NewKey,
        Outcome,
        Phase,
        PostmortemRequest,
    )

PROVIDER_CALL = dict(start_to_close_timeout=timedelta(seconds=90), retry_policy=CHANGE_RETRY)
REFERENCE_PREFIXES = ("file:", "env:", "store:")


@workflow.defn
class KeyRotationWorkflow(RollbackWorkflowBase):
    rollback_type = "keys"
    locks = ("service",)

    def __init__(self) -> None:
        super().__init__()
        self.request: KeyRotationInput | None = None
        self.plan: dict[str, KeyPlanItem] = {}
        self.awaiting_keys: set[str] = set()
        self.provided: dict[str, NewKey] = {}

    # -- a person hands over a key the provider cannot create by API ------------------------------
    @workflow.update
    async def provide_key(self, given: KeyReference) -> NewKey:
        """Take a reference to the new key (never the key): the worker reads it, tests it with the
        provider where it can, and keeps it in the protected store. A bad one is refused with the
        reason and the run keeps waiting."""
        item = self.plan[given.key]
        try:
            material = await workflow.execute_activity(
                "keys.adopt", KeyAdoptRequest(service=self.service, key=given.key, reference=given.reference,
                                              old_fingerprint=item.old_fingerprint),
                result_type=NewKey, start_to_close_timeout=timedelta(seconds=60), retry_policy=READ_RETRY)
        except ActivityError as exc:
            self.record(EventKind.REFUSED, f"key {given.key} from {given.provided_by} refused: {cause_message(exc)}",
                        actor=given.provided_by)
            raise ApplicationError(cause_message(exc), type="KeyReference", non_retryable=True) from None
        if given.key in self.provided:  # two deliveries raced through the validator: the first stands
            raise ApplicationError(f"key {given.key} was already provided; this one was not used", type="KeyReference")
        self.provided[given.key] = material
        self.awaiting_keys.discard(given.key)
        self.record(EventKind.SIGNAL, f"new {given.key} provided ({material.fingerprint})", actor=given.provided_by,
                    reference=given.reference.split(":", 1)[0])
        self.audit("key_provided", actor=given.provided_by, step=given.key, fingerprint=material.fingerprint)
        return material

    @provide_key.validator
    def _check_key(self, given: KeyReference) -> None:
        if given.key not in self.awaiting_keys:
            waiting = ", ".join(sorted(self.awaiting_keys)) or "none"
            raise ValueError(f"this run is not waiting for key {given.key!r} (waiting for: {waiting})")
        if not given.reference.startswith(REFERENCE_PREFIXES):
            # never echo what was sent: it may be the key itself
            raise ValueError("give a reference to the key (file:/path, env:NAME or store:REF), never the key; "
                             "nothing was recorded")

    @workflow.run
    @guarded
    async def run(self, request: KeyRotationInput) -> KeyRotationResult:
        self.request = request
        self.start_run(request.service, request.severity)
        mode = "compromised keys: revoke first" if request.compromised else "rotation"
        self.record(EventKind.STARTED, f"key {mode} for {request.service} "
                    f"({', '.join(request.keys) or 'every configured key'}): {request.reason}",
                    actor=request.requested_by, dry_run=request.dry_run, compromised=request.compromised)
        context = await self.service_context(request.service)
        provider = env_provider(context)
        if provider == "compose":  # its compose file owns the environment; there is nothing to set by API
            raise ApplicationError(f"service {request.service!r} is a Compose service: put the new keys in its compose "
                                   "file (or .env) and recreate it; key rotation sets keys on Vercel and Docker "
                                   "services", type="EnvNotSupported", non_retryable=True)
        result = KeyRotationResult(service=request.service, outcome="failed", artifact_dir=context.artifact_dir)

        # 1. Capture what runs now: the old keys (in the store) are the way back
        health, before = await capture_environment(request.service, provider, "captured before key rotation")
        self.record(EventKind.CAPTURED, f"{before.label or before.deployment} runs with {len(before.hashes)} "
                    "variables (names and hashes here, values in the protected store)")

        # 2. Plan
        self.enter(Phase.PLANNING)
        items = await workflow.execute_activity(
            "keys.plan", KeyPlanRequest(service=request.service, keys=request.keys, ref=before.ref),
            result_type=list[KeyPlanItem], **QUICK)
        self.plan = {item.name: item for item in items}
        result.plan = items
        steps = "revoke the old keys (after approval), then create, set, redeploy and verify" if request.compromised \
            else "create, set, redeploy and verify the new keys, then revoke the old ones (after approval)"
        self.record(EventKind.PLANNED, f"{steps}: " + "; ".join(
            f"{i.name} ({i.provider}, old {i.old_key_id or i.old_fingerprint}: new by {i.create}, old revoked by "
            f"{i.revoke})" for i in items), keys=[i.name for i in items])
        if request.dry_run:
            self.record(EventKind.RESOLVED, "dry run: nothing was changed")
            return await self._finish(result, "dry_run", f"dry run: would rotate {', '.join(self.plan)}; nothing "
                                      "was changed")
        await self.notify(f"{request.service}: key {mode} started for {', '.join(self.plan)} ({request.reason})",
                          key="started")

        if request.compromised:
            # Runbook 002's compromise: the old keys stop working first; the app may fail until
            # the new ones are live.
            outcome = await self.ask("rotate keys", "REVOKE the compromised keys now (" + ", ".join(self.plan)
                                     + "); the app may fail until the new keys are set and redeployed"
                                     + self._by_hand(items),
                                     request.approval_timeout)
            if outcome:
                return await self._finish(result, outcome, f"key revocation {outcome}; nothing was changed")
            self.enter(Phase.EXECUTING)
            result.revoked = await self._revoke(items, request, compromised=True)
            try:
                new = await self._new_keys(request)
                result.new_keys = new
                applied = await self._set(request.service, provider, new)
                result.deployment = applied.deployment
                await self._verify(request.service, context, applied, new)
            except (ApplicationError, ActivityError) as exc:
                # the old keys are revoked: there is no way back, only forward by hand
                message = (f"the compromised keys of {request.service} are revoked but replacing them failed: "
                           f"{cause_message(exc)}. Set working keys by hand; see {context.artifact_dir}")
                self.record(EventKind.ESCALATED, message)
                await self.notify(f"ESCALATION: {message}", key="compromise-unverified", escalation=True)
                await self._postmortem(result, "failed", message)
                raise ApplicationError(message, type="KeysNotVerified", non_retryable=True) from exc
        else:
            self.enter(Phase.EXECUTING)
            new = await self._new_keys(request)
            result.new_keys = new
            applied = None
            try:
                applied = await self._set(request.service, provider, new)
                result.deployment = applied.deployment
                await self._verify(request.service, context, applied, new)
            except BaseException as exc:  # cancellation puts the old keys back too
                why = "cancelled" if isinstance(exc, asyncio.CancelledError) else cause_message(exc)
                await self._undo(request.service, provider, before, items, why)
                message = (f"key rotation of {request.service} failed and was undone: {why}. The old keys are set "
                           f"again and nothing was revoked; the new keys ({', '.join(self._ids(new))}) are unused.")
                await self._postmortem(result, "compensated", message)
                raise ApplicationError(message, type="RollbackCompensated", non_retryable=True) from exc
            outcome = await self.ask("rotate keys", "the new keys are live and verified; REVOKE the old ones ("
                                     + ", ".join(f"{i.name} {i.old_key_id or i.old_fingerprint}" for i in items)
                                     + ")" + self._by_hand(items), request.approval_timeout)
            if outcome:
                message = (f"new keys are live and verified, but revoking the old ones was {outcome.replace('_', ' ')}"
                           ": the OLD KEYS STILL WORK; revoke them by hand or run the rotation again")
                self.record(EventKind.ESCALATED, message)
                await self.notify(f"{request.service}: {message}", key="not-revoked", escalation=True)
                return await self._finish(result, outcome, message)
            self.enter(Phase.EXECUTING)
            result.revoked = await self._revoke(items, request, compromised=False)

        # 3. The old keys must no longer work; record the rotated environment as good
        await self._check_old_keys_dead(request.service, items, before.ref)
        await workflow.execute_activity(
            f"{provider}.env_read", EnvReadRequest(service=request.service, reason="keys rotated and verified",
                                                   healthy=True), result_type=EnvSnapshot, **QUICK)
        self.record(EventKind.RESOLVED, f"{request.service} runs with new keys ({', '.join(self._ids(new))}); "
                    f"old keys revoked: {', '.join(result.revoked)}")
        await self.notify(f"{request.service}: keys rotated ({', '.join(self._ids(new))}); old keys revoked",
                          key="resolved", reason=request.reason)
        return await self._finish(result, "rotated", f"rotated {', '.join(self.plan)} on {result.deployment}; old "
                                  "keys revoked")

    # -- steps ---------------------------------------------------------------------------------
    @staticmethod
    def _by_hand(items: list[KeyPlanItem]) -> str:
        manual = [f"{i.name} ({i.provider})" for i in items if i.revoke == "person"]
        return f"; revoke {', '.join(manual)} in the provider's dashboard first, then approve" if manual else ""

    @staticmethod
    def _ids(keys: list[NewKey]) -> list[str]:
        return [f"{k.name} {k.key_id or k.fingerprint}" for k in keys]

    async def _new_keys(self, request: KeyRotationInput) -> list[NewKey]:
        """By API where the provider allows it; else wait for a person's reference."""
        info = workflow.info()
        made: list[NewKey] = []
        for item in self.plan.values():
            if item.create == "api":
                key = await workflow.execute_activity(
                    "keys.create", KeyCreateRequest(service=request.service, key=item.name,
                                                    change_key=f"{info.workflow_id}/{info.run_id}/{item.name}"),
                    result_type=NewKey, **PROVIDER_CALL)
                self.record(EventKind.EXECUTING, f"new {item.name} created at {item.provider}: "
                            f"{key.key_id or key.fingerprint}", key_id=key.key_id, fingerprint=key.fingerprint)
                self.audit("key_created", step=item.name, key_id=key.key_id, fingerprint=key.fingerprint)
                made.append(key)
        wanted = [i.name for i in self.plan.values() if i.create == "person"]
        if wanted:
            self.awaiting_keys = set(wanted)
            ask = (f"create new {', '.join(wanted)} at the provider and hand it over: `rollback keys provide "
                   f"{workflow.info().workflow_id} --key NAME --from-file PATH` (or --stdin)")
            self.record(EventKind.APPROVAL_REQUESTED, ask, keys=wanted)
            await self.notify(f"{self.service}: {ask}", key="keys-wanted")
            for round_ in range(2):
                try:
                    await workflow.wait_condition(lambda: not self.awaiting_keys, timeout=request.key_timeout)
                    break
                except asyncio.TimeoutError:
                    if round_ == 1:
                        self.awaiting_keys = set()
                        raise ApplicationError(f"no new key for {', '.join(wanted)} after {2 * request.key_timeout}; "
                                               "nothing was set", type="KeysNotProvided", non_retryable=True) from None
                    self.record(EventKind.ESCALATED, f"still waiting for {', '.join(sorted(self.awaiting_keys))}")
                    await self.notify(f"ESCALATION: {self.service} key rotation waits for "
                                      f"{', '.join(sorted(self.awaiting_keys))}", key="keys-wanted-escalation",
                                      escalation=True)
            made += [self.provided[name] for name in wanted]
        return made

    async def _set(self, service: str, provider: str, new: list[NewKey]) -> EnvSetResult:
        """Every new key into the deployment's environment, one redeploy."""
        ref = await workflow.execute_activity("keys.merge", KeyMergeRequest(service=service, refs=[k.ref for k in new]),
                                              result_type=str, **QUICK)
        names = sorted({n for k in new for n in self._vars(self.plan[k.name])})
        info = workflow.info()
        applied = await workflow.execute_activity(
            f"{provider}.env_set", EnvSetRequest(service=service, ref=ref, names=names,
                                                 change_key=f"keys:{info.workflow_id}/{info.run_id}"),
            result_type=EnvSetResult, retry_policy=CHANGE_RETRY, **ENV_SET)
        self.record(EventKind.ROLLED_BACK, f"new keys set ({', '.join(applied.set) or 'no change'}); "
                    f"{applied.deployment} serves them")
        return applied

    @staticmethod
    def _vars(item: KeyPlanItem) -> list[str]:
        return [*item.env, *([item.id_env] if item.id_env else [])]

    async def _verify(self, service: str, context, applied: EnvSetResult, new: list[NewKey]) -> None:
        self.enter(Phase.VERIFYING)
        verdict = await self.verify_app(service, context.config.health, applied.details.get("expected_version"))
        if not verdict.passed:
            self.record(EventKind.VERIFICATION_FAILED, verdict.problem)
            raise ApplicationError(f"the app is unhealthy with the new keys: {verdict.problem}",
                                   type="VerificationFailed", non_retryable=True)
        for key in new:
            check = await workflow.execute_activity("keys.test", KeyTestRequest(service=service, key=key.name,
                                                                                ref=key.ref),
                                                    result_type=KeyTestResult, **QUICK)
            if check.checked and not check.works:
                self.record(EventKind.VERIFICATION_FAILED, f"new {key.name} does not work: {check.detail}")
                raise ApplicationError(f"the provider refuses the new {key.name}: {check.detail}",
                                       type="VerificationFailed", non_retryable=True)
        self.record(EventKind.VERIFIED, f"app healthy ({context.config.health.consecutive_checks} checks); provider "
                    "test calls pass with the new keys")

    async def _revoke(self, items: list[KeyPlanItem], request: KeyRotationInput, compromised: bool) -> list[str]:
        """API revocations; the keys a person revokes were confirmed by the approval just given."""
        revoked = []
        for item in items:
            if item.revoke == "api":
                done = await workflow.execute_activity(
                    "keys.revoke", KeyRevokeRequest(service=request.service, key=item.name, key_id=item.old_key_id,
                                                    compromised=compromised),
                    result_type=KeyRevokeResult, **PROVIDER_CALL)
                self.record(EventKind.EXECUTING, f"old {item.name} revoked at {item.provider}: {done.detail}")
            else:
                self.record(EventKind.EXECUTING, f"old {item.name} ({item.old_fingerprint}) to be revoked by a person "
                            f"in the {item.provider} dashboard (confirmed by the approval)")
            self.audit("key_revoked", step=item.name, key_id=item.old_key_id, fingerprint=item.old_fingerprint,
                       by=item.revoke, compromised=compromised)
            revoked.append(f"{item.name} {item.old_key_id or item.old_fingerprint}")
        await self.flush_audit()
        return revoked

    async def _check_old_keys_dead(self, service: str, items: list[KeyPlanItem], old_ref: str) -> None:
        alive = []
        for item in items:
            if not item.test_call:
                continue
            check = await workflow.execute_activity("keys.test", KeyTestRequest(service=service, key=item.name,
                                                                                ref=old_ref),
                                                    result_type=KeyTestResult, **QUICK)
            if check.works:
                alive.append(item.name)
            self.record(EventKind.VERIFIED if not check.works else EventKind.ESCALATED,
                        f"old {item.name}: {'STILL WORKS' if check.works else 'refused'} ({check.detail})")
        if alive:
            await self.notify(f"ESCALATION: {service}: the old {', '.join(alive)} still work after revocation; "
                              "revoke them at the provider now", key="old-key-alive", escalation=True)

    async def _undo(self, service: str, provider: str, before: EnvSnapshot, items: list[KeyPlanItem], why: str) -> None:
        self.enter(Phase.COMPENSATING)
        self.record(EventKind.COMPENSATING, f"putting the old keys back: {why}")
        names = sorted({n for item in items for n in self._vars(item)})
        back = [n for n in names if before.hashes.get(n, "unreadable") != "unreadable"]
        added = [n for n in names if n not in before.hashes]
        info = workflow.info()
        try:
            undone = await workflow.execute_activity(
                f"{provider}.env_set", EnvSetRequest(service=service, ref=before.ref, names=back, remove=added,
                                                     change_key=f"keys-undo:{info.workflow_id}/{info.run_id}"),
                result_type=EnvSetResult, retry_policy=CHANGE_RETRY, **ENV_SET)
        except ActivityError as exc:
            self.record(EventKind.FAILED, f"COMPENSATION FAILED, manual action needed: {cause_message(exc)}")
            self.enter(Phase.FAILED)
            await self.notify(f"{service}: key rotation failed AND the old keys could not be put back: "
                              f"{cause_message(exc)}", key="compensation-failed", escalation=True)
            raise ApplicationError(f"key rotation of {service} failed ({why}) and putting the old keys back also "
                                   f"failed ({cause_message(exc)}): set them by hand", type="CompensationFailed",
                                   non_retryable=True) from exc
        self.record(EventKind.COMPENSATED, f"old values of {', '.join(back)} set again; {undone.deployment} serves "
                    "them; nothing was revoked")
        self.enter(Phase.FAILED)
        await self.notify(f"{service}: key rotation failed and was undone (nothing revoked): {why}", key="compensated",
                          escalation=True)

    async def _finish(self, result: KeyRotationResult, outcome: str, message: str) -> KeyRotationResult:
        self.close(result, outcome, message, succeeded=Outcome.succeeded(outcome))
        if outcome != "dry_run":
            await self._postmortem(result, outcome, message)
        await self.finish_handlers()
        return result

    async def _postmortem(self, result: KeyRotationResult, outcome: str, message: str) -> None:
        summary = {"outcome": outcome, "message": message, "phase_seconds": dict(self.phase_seconds),
                   "keys": [f"{i.name} ({i.provider}) old {i.old_key_id or i.old_fingerprint}" for i in result.plan],
                   "new keys": self._ids(result.new_keys), "revoked": result.revoked}
        await workflow.execute_activity(
            "capture.postmortem",
            PostmortemRequest(service=result.service, artifact_dir=result.artifact_dir or "",
                              title=f"Key rotation of {result.service}: {outcome}", summary=summary,
                              timeline=bounded_timeline(self.events), alerts=self.top_alerts(100)),
            start_to_close_timeout=timedelta(seconds=30), retry_policy=READ_RETRY)
