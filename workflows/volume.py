"""Docker named volumes (runbook 004, option 3): a verified tar of the volume, and a restore into
a new volume that the container is recreated with; the old volume and container are kept."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from workflows.base import CHANGE_RETRY, LONG_STEP, READ_RETRY, RollbackWorkflowBase, cause_message, guarded
    from workflows.models import (
        ArchiveRequest,
        EventKind,
        Phase,
        VolumeBackupRequest,
        VolumeInput,
        VolumeManifest,
        VolumePutBackRequest,
        VolumeRestoreInput,
        VolumeRestoreRequest,
        VolumeRestoreResult,
    )


@workflow.defn
class VolumeBackupWorkflow(RollbackWorkflowBase):
    rollback_type = "backup"

    @workflow.run
    @guarded
    async def run(self, request: VolumeInput) -> VolumeManifest:
        backup_id = f"{request.volume}-{workflow.now():%Y%m%d%H%M%S}-{workflow.info().run_id[-12:]}"
        manifest = await self.backup_step(
            request.service, f"backup of volume {request.volume} of {request.service}: {request.reason}",
            "docker.volume_backup", VolumeBackupRequest(service=request.service, volume=request.volume,
                                                        backup_id=backup_id), VolumeManifest)
        self.record(EventKind.VERIFIED, f"volume backup {manifest.backup_id}: {manifest.files} entries, "
                    f"{manifest.size_bytes} bytes, sha256 {manifest.sha256[:12]}…, full read OK")
        return await self.done(manifest)


@workflow.defn
class VolumeRestoreWorkflow(RollbackWorkflowBase):
    rollback_type = "restore"
    locks = ("service",)

    @workflow.run
    @guarded
    async def run(self, request: VolumeRestoreInput) -> VolumeRestoreResult:
        self.start_run(request.service, "P1")
        self.record(EventKind.STARTED, f"volume restore of {request.service} from {request.source}: "
                    f"{request.reason}", actor=request.requested_by)
        result = VolumeRestoreResult(service=request.service, outcome="failed")
        context = await self.service_context(request.service)
        result.source = source = await workflow.execute_activity(
            "docker.volume_validate", ArchiveRequest(service=request.service, archive=request.source),
            result_type=VolumeManifest, retry_policy=READ_RETRY, **LONG_STEP)
        self.record(EventKind.ASSESSED, f"{source.backup_id} valid: sha256 matches, {source.files} entries read")
        result.new_volume = f"{source.volume}_restore_{workflow.now():%Y%m%d%H%M%S}"
        outcome = await self.ask(
            "volume restore", f"fill new volume {result.new_volume} from {source.backup_id} (taken "
            f"{source.created_at:%Y-%m-%d %H:%M}) and recreate {source.container} on it; the current volume "
            f"{source.volume} and container are kept", request.approval_timeout)
        if outcome:
            return await self.finish(result, outcome, f"volume restore {outcome}; nothing was changed")
        self.enter(Phase.EXECUTING)
        key = f"{workflow.info().workflow_id}/{workflow.info().run_id}"
        result.details = await workflow.execute_activity(
            "docker.volume_restore", VolumeRestoreRequest(service=request.service, backup_id=source.backup_id,
                                                          new_volume=result.new_volume, rollback_key=key),
            result_type=dict[str, str], retry_policy=CHANGE_RETRY, **LONG_STEP)
        self.record(EventKind.ROLLED_BACK, f"{source.container} recreated on volume {result.new_volume}; the "
                    f"previous container is kept as {result.details['aside_name']}, volume {source.volume} kept")
        self.enter(Phase.VERIFYING)
        verdict = await self.verify_app(request.service, context.config.health)
        if verdict.passed:
            self.record(EventKind.VERIFIED, "app healthy on the restored volume")
            return await self.finish(result, "restored", f"{source.container} runs on {result.new_volume}, "
                                     f"restored from {source.backup_id}")
        # put the previous container (on the previous volume) back
        self.record(EventKind.VERIFICATION_FAILED, verdict.problem)
        self.enter(Phase.COMPENSATING)
        try:
            await workflow.execute_activity(
                "docker.put_back", VolumePutBackRequest(service=request.service, details=result.details),
                result_type=str, start_to_close_timeout=timedelta(minutes=5), retry_policy=CHANGE_RETRY)
        except ActivityError as exc:
            self.record(EventKind.FAILED, f"COMPENSATION FAILED: {cause_message(exc)}")
            return await self.finish(result, "failed", f"app unhealthy on {result.new_volume} and the previous "
                                     f"container could not be put back: {cause_message(exc)}")
        self.record(EventKind.COMPENSATED, f"the previous container is back on volume {source.volume}")
        return await self.finish(result, "compensated", f"app unhealthy on the restored volume ({verdict.problem}); "
                                 "the previous container was put back")
