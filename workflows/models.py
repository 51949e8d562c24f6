"""Shared pydantic models: workflow inputs and results, timeline events, approvals.

Both workflows and activities import this module, so it holds data only: no I/O.
Every workflow input has defaults so the Temporal UI's "Start Workflow" form works with a
short JSON document such as ``{"service": "web"}``.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from workflows.config import ServiceConfig
from workflows.iso_time import parse_iso_time

TASK_QUEUE = "rollback"


class Outcome(str, Enum):
    """How a run ended: one list for every workflow and for the CLI's exit codes."""

    ROLLED_BACK = "rolled_back"
    RESTORED = "restored"
    RECOVERED = "recovered"  # a point-in-time copy handed over; the live database untouched
    REPAIRED = "repaired"
    CLEANED = "cleaned"
    VERIFIED = "verified"  # a backup written and read back in full
    DRY_RUN = "dry_run"
    NOTHING_TO_DO = "nothing_to_do"
    NOT_DIRTY = "not_dirty"
    REJECTED = "rejected"
    NOT_APPROVED = "not_approved"
    COMPENSATED = "compensated"
    FAILED = "failed"
    RESOLVED = "resolved"  # an incident closed: mitigated and verified, or closed by a person
    ROTATED = "rotated"  # new keys live and verified, the old ones revoked

    @classmethod
    def succeeded(cls, outcome: str) -> bool:
        """Whether a run that ended with `outcome` did what it was asked (exit code 0)."""
        return outcome in SUCCESSFUL_OUTCOMES


SUCCESSFUL_OUTCOMES = frozenset({Outcome.ROLLED_BACK, Outcome.RESTORED, Outcome.RECOVERED, Outcome.REPAIRED,
                                 Outcome.CLEANED, Outcome.VERIFIED, Outcome.DRY_RUN, Outcome.NOTHING_TO_DO,
                                 Outcome.NOT_DIRTY, Outcome.RESOLVED, Outcome.ROTATED})


class EventKind(str, Enum):
    STARTED = "started"
    ASSESSED = "assessed"
    CAPTURED = "captured"
    DECIDED = "decided"
    PLANNED = "planned"
    APPROVAL_REQUESTED = "approval_requested"
    APPROVED = "approved"
    REJECTED = "rejected"
    ESCALATED = "escalated"
    EXECUTING = "executing"
    ROLLED_BACK = "rolled_back"
    VERIFIED = "verified"
    VERIFICATION_FAILED = "verification_failed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    NOTIFIED = "notified"
    SIGNAL = "signal"
    ACKNOWLEDGED = "acknowledged"
    FAILED = "failed"
    CANCELLED = "cancelled"
    RESOLVED = "resolved"
    REFUSED = "refused"  # a decision by someone the approver policy does not admit


class TimelineEvent(BaseModel):
    """One line of a run's story: what happened, when, and who did it."""

    at: datetime
    kind: EventKind
    message: str
    actor: str = "workflow"
    data: dict[str, Any] = Field(default_factory=dict)


class ApprovalInput(BaseModel):
    """What an approver sends with the `approve` or `reject` update. `channel` says how the
    identity was established: `slack` (a signed button press, mapped to a person by the receiver),
    `cli` or `ui` (a name typed by someone Temporal's own authorization let send Updates)."""

    approver: str = ""
    reason: str = ""
    channel: str = "ui"
    slack_user: str | None = None
    step: str | None = Field(default=None, description="The checkpoint this decision is for (the CLI and Slack "
                             "send it): refused when the run waits for another step (a stale button, a re-run "
                             "command), so nobody decides a step they did not see.")


class ApproverRules(BaseModel):
    """The approver policy a run enforces, resolved from the config when it starts (validators
    cannot read files): per step kind the names allowed (groups expanded); kinds absent are open."""

    allowed: dict[str, list[str]] = Field(default_factory=dict)
    four_eyes: list[str] = Field(default_factory=lambda: ["database", "repair", "key_rotation"])
    min_approvers_p0_restore: int = 1


class AuditEntry(BaseModel):
    """One line of the audit log: who did what to which run, through which channel."""

    id: str = Field(description="Unique per event; a retried append skips lines already written.")
    at: datetime
    event: str = Field(description="started | approved | rejected | refused | cancelled | ended")
    service: str = ""
    workflow_id: str = ""
    run_id: str = ""
    workflow_type: str = ""
    actor: str = ""
    channel: str = ""
    step: str = ""
    reason: str = ""
    detail: dict[str, Any] = Field(default_factory=dict)


class AuditBatch(BaseModel):
    entries: list[AuditEntry]


class ApprovalDecision(BaseModel):
    """A recorded decision at an approval checkpoint."""

    step: str
    approved: bool
    approver: str
    reason: str
    at: datetime
    still_needed: int = Field(default=0, description="Further approvers the step waits for (a P0 restore).")


class AlertNotice(BaseModel):
    """A further alert (or a resolved notice) attached to a running incident workflow."""

    source: str = "manual"
    status: str = "firing"
    summary: str = ""
    fingerprint: str = ""


class AlertCount(BaseModel):
    """One alert (by fingerprint) as a run saw it: how often, first and last, in what state."""

    fingerprint: str
    source: str = ""
    status: str = "firing"
    summary: str = ""
    count: int = 1
    first_seen: datetime | None = None
    last_seen: datetime | None = None


class AlertBatch(BaseModel):
    """Alerts the receiver collected for a running workflow since its last batch, counted per
    fingerprint: one signal for a storm, not one per alert."""

    items: list[AlertCount] = Field(default_factory=list)
    others: int = Field(default=0, description="Further alerts in this batch, only counted (every alert is "
                        "in the receiver's state dir, webhook/alerts/<workflow id>.jsonl)")
    other_fingerprints: int = 0


class Phase(str, Enum):
    ASSESSING = "assessing"
    PLANNING = "planning"
    AWAITING_APPROVAL = "awaiting_approval"
    EXECUTING = "executing"
    VERIFYING = "verifying"
    MITIGATING = "mitigating"  # an incident whose plan did not (fully) work: a person chooses what next
    COMPENSATING = "compensating"
    DONE = "done"
    FAILED = "failed"


# ---------------------------------------------------------------------------------------------
# Application rollback


class HealthSnapshot(BaseModel):
    """What the service's health and version endpoints said at one moment."""

    reachable: bool
    http_status: int | None = None
    status: str | None = None
    error_rate: float | None = None
    database: str | None = None
    version: str | None = None
    healthy: bool = False
    problem: str = ""


class AppVersion(BaseModel):
    """A deployable version of an application, as the provider names it."""

    provider: str
    id: str = Field(description="Immutable identity: image ID, deployment id, commit sha.")
    label: str = Field(default="", description="What a person recognises: tag, URL, subject.")
    version: str | None = Field(default=None, description="What the app's version endpoint should say.")
    schema_version: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    rolled_back_from: bool = Field(default=False, description="An earlier rollback moved away from this version: "
                                   "deploying it again needs an approval that says so.")


class ServiceRef(BaseModel):
    service: str


class RecentRollbacks(BaseModel):
    """Other automatic rollbacks of a service lately: past the cooldown or the hourly cap, the next
    automatic one waits for a person."""

    in_cooldown: int
    in_hour: int
    limit_reached: bool


class TargetRequest(BaseModel):
    service: str
    current: AppVersion
    explicit: str | None = None


class CaptureRequest(BaseModel):
    service: str
    artifact_dir: str
    current: AppVersion


class CaptureResult(BaseModel):
    files: list[str] = Field(default_factory=list)


class ExecuteRequest(BaseModel):
    service: str
    current: AppVersion
    target: AppVersion
    rollback_key: str = Field(description="Idempotency key: the workflow ID.")
    reason: str = ""


class ExecuteResult(BaseModel):
    provider: str
    details: dict[str, Any] = Field(default_factory=dict)


class UndoRequest(BaseModel):
    service: str
    current: AppVersion
    target: AppVersion
    executed: ExecuteResult | None = None
    rollback_key: str = ""


class VerifyRequest(BaseModel):
    service: str
    expected_version: str | None = None


class VerifyResult(BaseModel):
    passed: bool
    checks: list[HealthSnapshot] = Field(default_factory=list)
    problem: str = ""


class SchemaRequest(BaseModel):
    service: str


class NotifyRequest(BaseModel):
    service: str
    key: str = Field(description="Idempotency key: one message per key.")
    text: str
    fields: dict[str, str] = Field(default_factory=dict)
    escalation: bool = False
    approval_for: str | None = Field(default=None, description="Workflow id: the message carries Approve / "
                                     "Reject buttons for its waiting step (Slack interactivity).")
    approval_step: str | None = None
    approval_run: str | None = Field(default=None, description="The run the buttons are for: a press of an old "
                                     "message never decides a later run of the same workflow id.")


class PostmortemRequest(BaseModel):
    service: str
    artifact_dir: str
    title: str
    summary: dict[str, Any] = Field(default_factory=dict)
    timeline: list[TimelineEvent] = Field(default_factory=list)
    alerts: list[AlertCount] = Field(default_factory=list, description="The alerts seen, most frequent first")


class SchemaCheck(BaseModel):
    checked: bool
    message: str
    target_schema_version: str | None = None
    live_schema_version: str | None = None
    migration_rollback_needed: bool = False


class RollbackPlan(BaseModel):
    service: str
    provider: str
    current: AppVersion
    target: AppVersion
    steps: list[str]
    expected_downtime: str
    schema_check: SchemaCheck
    needs_approval: bool
    approval_reasons: list[str] = Field(default_factory=list)


class AppRollbackInput(BaseModel):
    """Input of `AppRollbackWorkflow`. Only `service` is required."""

    service: str
    target: str | None = Field(
        default=None,
        description="Explicit target: Vercel deployment id or URL, image id or reference, commit.",
    )
    reason: str = "manual rollback"
    dry_run: bool = False
    requested_by: str = "unknown"
    automatic: bool = False
    approval_timeout: timedelta = timedelta(minutes=30)
    severity: str = "P1"
    require_approval: bool = Field(default=False, description="Wait for approval whatever the policy says. (Automatic rollbacks check "
                                    "the cooldown and hourly cap themselves.)")
    trigger_rule: str = Field(default="", description="The decision rule that started an automatic rollback.")
    watch: timedelta = Field(default=timedelta(0),
                             description="After a verified rollback, wait this long for the alert to resolve.")
    approved_by: str | None = Field(default=None, description="Set by a parent workflow (an incident) whose own "
                                    "approval covered this rollback: it does not ask again.")


class RunResult(BaseModel):
    """What every workflow's result says: the outcome, the message, phase durations, the timeline."""

    service: str
    outcome: str
    phase_seconds: dict[str, float] = Field(default_factory=dict)
    timeline: list[TimelineEvent] = Field(default_factory=list)
    message: str = ""


class AppRollbackResult(RunResult):
    # outcome: rolled_back | dry_run | rejected | not_approved | compensated | failed
    plan: RollbackPlan | None = None
    from_version: str | None = None
    to_version: str | None = None
    artifact_dir: str | None = None


class RollbackStatus(BaseModel):
    """What the `status` query returns: enough for the CLI to draw progress."""

    workflow: str
    service: str
    phase: Phase
    waiting_for_approval: str | None = None
    timeline: list[TimelineEvent]
    alerts_received: int = Field(default=0, description="Alerts attached to this run, all fingerprints")
    alerts_distinct: int = Field(default=0, description="Distinct fingerprints among them")
    top_alerts: list[AlertCount] = Field(default_factory=list, description="The most frequent, at most 20")


class ServiceContext(BaseModel):
    """A service's config (secret *names* only) and where this run writes its artifacts."""

    service: str
    config: ServiceConfig
    artifact_dir: str
    approvers: ApproverRules | None = Field(default=None, description="None: no approver policy configured.")


class SchemaVersion(BaseModel):
    version: str | None = None
    tool: str | None = None
    error: str = ""


class StatusPageRequest(BaseModel):
    service: str
    key: str = Field(description="One public incident per key.")
    name: str
    status: str = Field(description="investigating | identified | monitoring | resolved")
    body: str
    impact: str = "minor"


class Alert(BaseModel):
    """Any source's alert, normalised: what the decision policy reads. `labels` always has
    `alertname`, `service` and `severity` (empty when the source does not say)."""

    source: str
    status: str = Field(description="firing | resolved | acknowledged (in the paging tool) | info (recorded, "
                        "never acted on)")
    fingerprint: str
    acknowledged_by: str = Field(default="", description="Who acknowledged it in the paging tool")
    service: str | None = None
    severity: str | None = Field(default=None, description="The source's own severity word, as sent")
    summary: str = ""
    labels: dict[str, str] = Field(default_factory=dict)
    values: dict[str, float] = Field(default_factory=dict)
    links: list[str] = Field(default_factory=list)
    occurrence: str = Field(default="", description="Replay key: the same for a retried delivery of this "
                            "alert, new when it fires again; empty when the source gives nothing to tell")
    notes: list[str] = Field(default_factory=list, description="What parsing ignored and why")


class AlertDecision(BaseModel):
    action: str = Field(description="rollback | incident | watch | notify | resolve | acknowledge | ignore")
    rule: str
    severity: str
    note: str = ""


# ---------------------------------------------------------------------------------------------
# Database backup and restore


class BackupManifest(BaseModel):
    """Written beside every archive; a restore trusts only archives with a matching manifest."""

    tool: str = "rollback-orchestrator"
    backup_id: str
    service: str
    database: str
    archive: str
    format: str = "custom"
    size_bytes: int
    sha256: str
    server_version: str
    pg_dump_version: str
    created_at: datetime
    tables: dict[str, int] = Field(default_factory=dict, description="schema.table -> row count at dump time")
    verified: bool = False


class BackupInput(BaseModel):
    """Input of `BackupWorkflow`. Only `service` is required."""

    service: str
    reason: str = "manual backup"


class BackupRequest(BaseModel):
    service: str
    backup_id: str
    from_port: int | None = Field(default=None, description="Dump a recovered cluster on 127.0.0.1:<port> "
                                  "(same credentials) instead of the live database.")
    as_of: datetime | None = Field(default=None, description="The data's point in time, when not now (PITR).")


class BaseBackup(BaseModel):
    """A pg_basebackup, verified with pg_verifybackup; with the archived WAL it is a PITR start."""

    backup_id: str
    service: str
    path: str
    started_at: datetime
    finished_at: datetime
    server_version: str
    size_bytes: int
    verified: bool = False


class PitrRequest(BaseModel):
    service: str
    target_time: datetime
    key: str = Field(description="Names the recovery's working directory; one per workflow run.")


class PitrWindow(BaseModel):
    enabled: bool
    earliest: datetime | None = None
    latest: datetime | None = None


class SupabaseRestoreRequest(BaseModel):
    service: str
    target_unix: int


class PitrRecovery(BaseModel):
    """A recovered cluster, running on loopback; the DSN carries no password (same roles as the source)."""

    service: str
    base_backup_id: str
    data_dir: str
    port: int
    dsn: str
    target_time: datetime
    stop_hint: str = Field(default="", description="How to stop the recovered server, for the OS user the "
                           "worker runs as (the server refuses pg_ctl as root).")


class ArchiveRequest(BaseModel):
    service: str
    archive: str
    # Read the whole archive back (pg_restore to /dev/null). A restore skips it: the sha256 proves
    # the bytes are those fully read when the backup was taken, and pg_restore reads them all again
    # into a database aside, which nothing serves from until the swap.
    full_read: bool = True


def check_backup_id(value: str, special: tuple[str, ...] = ()) -> str:
    """A backup id names a file inside the service's backup directory, nothing else: no path
    separators, no `..`, no leading dot or dash. `special` forms (`pitr`, `latest-before:`) pass."""
    if any(value == form or (form.endswith(":") and value.startswith(form)) for form in special):
        return value
    if not BACKUP_ID.fullmatch(value) or ".." in value:
        raise ValueError(f"{value!r} is not a backup id: ids are letters, digits, '.', '_', '-' and ':' (no path "
                         "separators, no '..'); see `rollback backups list`")
    return value


BACKUP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,199}")


class RestoreInput(BaseModel):
    """Input of `DatabaseRestoreWorkflow`: `service` and `source`: a backup id, `latest-before:<time>`,
    or `pitr` with `target_time`."""

    service: str
    source: str = Field(description="Backup id (from `rollback backups list`), `latest-before:<ISO time>`, or "
                        "`pitr` (point-in-time recovery to `target_time`).")
    target_time: datetime | None = None
    pitr_handoff: bool = Field(default=False, description="pitr: stop after recovery and hand over the recovered "
                               "cluster's DSN instead of swapping it in.")
    dry_run: bool = False
    reason: str = "manual restore"
    requested_by: str = "unknown"
    approval_timeout: timedelta = timedelta(minutes=30)
    approved_by: str | None = Field(default=None, description="Set by a parent workflow whose own approval "
                                    "covered this restore (a failed migration rollback's compensation).")
    verify_app: bool = Field(default=True, description="False when a parent rolls the app back next and verifies "
                             "it then (the broken app would fail this run's check).")
    reimport_recent: bool = Field(default=False, description="After the swap, insert the exported newer rows "
                                  "back where the table still fits them (conflicting rows are skipped).")
    severity: str = Field(default="P1", description="P0: the restore needs the policy's min_approvers_p0_restore.")

    @field_validator("source")
    @classmethod
    def _our_backup(cls, value: str) -> str:
        return check_backup_id(value, special=("pitr", "latest-before:"))

    @field_validator("target_time", mode="before")
    @classmethod
    def _any_iso_time(cls, value: Any) -> Any:
        # The UI's form sends what people paste (PostgreSQL's `…123+00` too), always read as UTC.
        return parse_iso_time(value) if isinstance(value, str) else value


class RestoreIntoRequest(BaseModel):
    service: str
    archive: str
    database: str
    label: str


class CountsRequest(BaseModel):
    service: str
    database: str | None = None
    port: int | None = Field(default=None, description="Read a recovered copy running on this loopback port "
                             "(a point-in-time recovery) instead of the service's server.")


class SwapRequest(BaseModel):
    service: str
    new_database: str
    keep_old_as: str


class SwapResult(BaseModel):
    live: str
    kept_old_as: str
    downtime_seconds: float
    terminated_sessions: int


class RestoreResult(RunResult):
    # outcome: restored | recovered (pitr handoff) | dry_run | rejected | not_approved | failed
    source: BackupManifest | None = None
    safety_backup: BackupManifest | None = None
    restored_database: str | None = None
    kept_old_as: str | None = None
    counts_before: dict[str, int] = Field(default_factory=dict)
    counts_after: dict[str, int] = Field(default_factory=dict)
    swap_downtime_seconds: float | None = None
    recent_rows: dict[str, int] = Field(default_factory=dict, description="Rows newer than the backup, exported")
    reimported: dict[str, dict[str, int | str]] = Field(default_factory=dict,
                                                        description="Per table: imported, rejected, reason")
    kill_switches_before: dict[str, str | None] = Field(default_factory=dict)
    kill_switches_restored: bool = False
    artifact_dir: str | None = None


class KeptDatabase(BaseModel):
    name: str
    kept_since: datetime = Field(description="From the name's timestamp: when the restore made it.")
    size_bytes: int
    connections: int


class CleanupInput(BaseModel):
    """Input of `RestoreCleanupWorkflow`: drop databases restores kept, once older than `older_than`."""

    service: str
    older_than: timedelta = timedelta(days=7)
    dry_run: bool = False
    reason: str = "cleanup after restore"
    requested_by: str = "unknown"
    approval_timeout: timedelta = timedelta(minutes=30)


class DropRequest(BaseModel):
    service: str
    databases: list[str]


class CleanupResult(RunResult):
    # outcome: cleaned | nothing_to_do | dry_run | rejected | not_approved
    candidates: list[KeptDatabase] = Field(default_factory=list)
    dropped: list[str] = Field(default_factory=list)


class ReimportRequest(BaseModel):
    service: str
    artifact_dir: str
    tables: dict[str, int]


class RecentRowsRequest(BaseModel):
    service: str
    since: datetime
    artifact_dir: str


# ---------------------------------------------------------------------------------------------
# Migration rollback and kill switches


class MigrationInfo(BaseModel):
    version: str
    name: str
    applied: bool
    has_down: bool


class MigrationStatus(BaseModel):
    """What `migrate status` would say: the tool's files beside its tracking table."""

    service: str
    tool: str
    current: str | None = Field(default=None, description="Last applied version; None before the first.")
    dirty: bool = False
    migrations: list[MigrationInfo] = Field(default_factory=list)
    last_stable: str | None = Field(default=None, description="Recorded by the last successful verification.")


class DataLoss(BaseModel):
    """Rows a down script would remove: one DROP TABLE / DROP COLUMN / TRUNCATE / DELETE."""

    version: str
    statement: str = Field(description="drop_table | drop_column | truncate | delete")
    table: str
    column: str | None = None
    rows: int
    csv: str | None = Field(default=None, description="Where the rows were exported before the rollback.")


class MigrationStep(BaseModel):
    version: str
    name: str
    previous: str | None = Field(description="The version the database is at after this step's down script.")
    down_file: str


class MigrationPlan(BaseModel):
    service: str
    tool: str
    current: str | None
    target: str | None = Field(description="None means before the first migration.")
    tracking_table: str = ""
    steps: list[MigrationStep] = Field(default_factory=list)
    data_loss: list[DataLoss] = Field(default_factory=list)


class MigrationPlanRequest(BaseModel):
    service: str
    target: str


class DataLossExportRequest(BaseModel):
    service: str
    plan: MigrationPlan
    artifact_dir: str


class DownStepRequest(BaseModel):
    service: str
    step: MigrationStep


class DownStepResult(BaseModel):
    version: str | None
    already_done: bool = False
    seconds: float = 0.0


class MigrationVerifyRequest(BaseModel):
    service: str
    target: str | None


class MarkStableRequest(BaseModel):
    service: str
    version: str | None


class ForceVersionRequest(BaseModel):
    service: str
    version: str


class FlagsRequest(BaseModel):
    """Kill switch values by name; None means "not set" (the row or key is removed)."""

    service: str
    values: dict[str, str | None]


class MigrationRollbackInput(BaseModel):
    """Input of `MigrationRollbackWorkflow`. `target`: a version, `-N` steps, or `last-stable`."""

    service: str
    target: str = "-1"
    dry_run: bool = False
    reason: str = "manual migration rollback"
    requested_by: str = "unknown"
    approval_timeout: timedelta = timedelta(minutes=30)
    approved_by: str | None = Field(default=None, description="Set by a parent workflow (an incident) whose own "
                                    "approval covered this rollback: it does not ask again.")
    verify_app: bool = Field(default=True, description="False when a parent rolls the app back next and verifies "
                             "it then (the broken app would fail this run's check).")


class MigrationRollbackResult(RunResult):
    # outcome: rolled_back | dry_run | nothing_to_do | rejected | not_approved | failed | compensated
    plan: MigrationPlan | None = None
    version_before: str | None = None
    version_after: str | None = None
    emergency_backup: BackupManifest | None = None
    kill_switches_before: dict[str, str | None] = Field(default_factory=dict)
    kill_switches_restored: bool = False
    artifact_dir: str | None = None


class MigrationRepairInput(BaseModel):
    """Input of `MigrationRepairWorkflow`: clear golang-migrate's dirty flag at `version`."""

    service: str
    version: str
    reason: str = "repair dirty migration state"
    requested_by: str = "unknown"
    approval_timeout: timedelta = timedelta(minutes=30)


class MigrationRepairResult(RunResult):
    # outcome: repaired | rejected | not_approved | not_dirty
    before: MigrationStatus | None = None
    after: MigrationStatus | None = None


# ---------------------------------------------------------------------------------------------
# Docker volumes (runbook 004, option 3)


class VolumeManifest(BaseModel):
    """Written beside every volume tar; a restore trusts only tars with a matching manifest."""

    backup_id: str
    service: str
    volume: str
    container: str
    mount_path: str
    archive: str
    size_bytes: int
    sha256: str
    files: int
    created_at: datetime
    verified: bool = False


class VolumeInput(BaseModel):
    """Input of `VolumeBackupWorkflow`: the service and the named volume its container mounts."""

    service: str
    volume: str
    reason: str = "manual volume backup"


class VolumeBackupRequest(BaseModel):
    service: str
    volume: str
    backup_id: str


class VolumeRestoreInput(BaseModel):
    """Input of `VolumeRestoreWorkflow`: restore a volume backup into a new volume and recreate the
    container on it; the old volume and container are kept."""

    service: str
    source: str = Field(description="A volume backup id (see `rollback volume list`).")
    reason: str = "manual volume restore"
    requested_by: str = "unknown"
    approval_timeout: timedelta = timedelta(minutes=30)

    @field_validator("source")
    @classmethod
    def _our_backup(cls, value: str) -> str:
        return check_backup_id(value)


class VolumeRestoreRequest(BaseModel):
    service: str
    backup_id: str
    new_volume: str
    rollback_key: str


class VolumePutBackRequest(BaseModel):
    service: str
    details: dict[str, str] = Field(description="What docker.volume_restore returned.")


class VolumeRestoreResult(RunResult):
    # outcome: restored | rejected | not_approved | compensated | failed
    source: VolumeManifest | None = None
    new_volume: str | None = None
    details: dict[str, str] = Field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Locks: one change at a time per service and per database, however a run was started


class LockHolder(BaseModel):
    """The top-level run that holds (or asks for) a resource."""

    workflow_id: str
    run_id: str
    workflow_type: str = ""


class LockInput(BaseModel):
    resource: str = Field(description="service:<name> or database:<host>:<port>/<db>")


class LockRequest(BaseModel):
    service: str
    kinds: list[str] = Field(description="service, database: which of the service's resources to hold")
    holder: LockHolder


class LockRelease(BaseModel):
    resources: list[str]
    holder: LockHolder


class LockResult(BaseModel):
    granted: bool
    resources: list[str] = Field(default_factory=list, description="Held now (when granted)")
    busy: str = Field(default="", description="The resource someone else holds (when refused)")
    holder: LockHolder | None = Field(default=None, description="Who holds it (when refused)")


# ---------------------------------------------------------------------------------------------
# Incidents (runbook 001 end to end)


class IncidentInput(BaseModel):
    """Input of `IncidentWorkflow`. `{"service": "web", "severity": "P0"}` is enough."""

    service: str
    severity: str | None = Field(default=None, description="P0..P3; None: classified from trigger and error_rate.")
    reason: str = "incident declared"
    trigger: str = Field(default="", description="What happened, in the runbooks' words: outage, payments, "
                         "data_corruption, security, migration_failure, error_rate, degradation, ...")
    error_rate: float | None = None
    requested_by: str = "unknown"
    automatic: bool = False
    trigger_rule: str = Field(default="", description="The alert rule that declared it (set by the receiver).")
    dry_run: bool = False
    detected_at: datetime | None = Field(default=None, description="When the problem was detected (an alert's "
                                         "startsAt); default: when the incident starts.")
    approval_timeout: timedelta = timedelta(minutes=30)
    watch: timedelta | None = Field(default=None, description="Watch period after recovery; default from config.")

    @field_validator("severity", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() or None if isinstance(value, str) else value

    @field_validator("detected_at", mode="before")
    @classmethod
    def _any_iso_time(cls, value: Any) -> Any:
        return parse_iso_time(value) if isinstance(value, str) else value


class AcknowledgeInput(BaseModel):
    """The `acknowledge` update: who is on it."""

    by: str = ""
    note: str = ""


class SeverityInput(BaseModel):
    """The `set_severity` update: raise or lower, with a reason."""

    severity: str
    reason: str = ""
    by: str = "unknown"


class ResolveInput(BaseModel):
    """The `resolve` update: close an incident that needs no (more) rollback."""

    reason: str = ""
    by: str = "unknown"


class EndpointCheck(BaseModel):
    url: str
    http_status: int | None = None
    ok: bool = False
    milliseconds: float | None = None
    problem: str = ""


class AssessReport(BaseModel):
    """Runbook 001 step 2 ("status only"): what is running and how it is doing; reads only."""

    service: str
    at: datetime
    health: HealthSnapshot
    response_ms: float | None = None
    app: AppVersion | None = None
    app_error: str = ""
    migrations: MigrationStatus | None = None
    migrations_error: str = ""
    endpoints: list[EndpointCheck] = Field(default_factory=list)
    error_lines: list[str] = Field(default_factory=list)
    database_reachable: bool | None = None
    active_sessions: int | None = None
    table_counts: dict[str, int] = Field(default_factory=dict, description="The critical tables' row counts.")
    database_error: str = ""


class DataDamage(BaseModel):
    """An up migration statement a down script cannot undo: the values it destroyed are gone."""

    version: str
    name: str
    statement: str = Field(description="update_all | delete_all | drop_column | truncate | type_change")
    table: str
    column: str | None = None
    applied_at: datetime | None = None
    applied_at_source: str = Field(default="", description="tracking table | deploy ledger")


class DamageRequest(BaseModel):
    service: str
    since_version: str | None = Field(description="Migrations applied after this version are read.")


class IncidentPlan(BaseModel):
    """What the incident proposes, in order; one approval covers every child it lists."""

    kind: str = Field(description="none | app | app+schema | app+schema+restore | restore ...")
    steps: list[str] = Field(default_factory=list)
    app_from: str | None = None
    app_to: str | None = None
    app_target: str | None = Field(default=None, description="The target's immutable id, for the child.")
    migration_target: str | None = None
    restore_from: str | None = Field(default=None, description="Backup id to restore, when data was destroyed.")
    damage: list[DataDamage] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


class ChildRun(BaseModel):
    workflow: str
    workflow_id: str
    outcome: str = "running"
    message: str = ""


class Milestones(BaseModel):
    """started -> detected -> acknowledged -> mitigated -> resolved; never backwards."""

    detected: datetime
    started: datetime
    acknowledged: datetime | None = None
    mitigated: datetime | None = None
    resolved: datetime | None = None

    def durations(self) -> dict[str, float | None]:
        """Time to detect / acknowledge / mitigate / resolve, in seconds from the detection
        (to detect: from the problem's start, the alert's startsAt, to the incident)."""
        def since(moment: datetime | None) -> float | None:
            return None if moment is None else round((moment - self.detected).total_seconds(), 3)
        return {"time_to_detect": round((self.started - self.detected).total_seconds(), 3),
                "time_to_acknowledge": since(self.acknowledged), "time_to_mitigate": since(self.mitigated),
                "time_to_resolve": since(self.resolved)}


class IncidentStatus(RollbackStatus):
    """The `status` query of an incident: the rollback status plus what an on-call person asks."""

    severity: str = "P1"
    rule: str = ""
    acknowledged_by: str | None = None
    alerts: list[AlertCount] = Field(default_factory=list)
    plan: IncidentPlan | None = None
    children: list[ChildRun] = Field(default_factory=list)
    next_update_at: datetime | None = None
    milestones: Milestones | None = None


class IncidentResult(RunResult):
    # outcome: resolved | dry_run | failed
    severity: str = "P1"
    rule: str = ""
    plan: IncidentPlan | None = None
    assessment: AssessReport | None = None
    children: list[ChildRun] = Field(default_factory=list)
    emergency_backup: BackupManifest | None = None
    kill_switches_before: dict[str, str | None] = Field(default_factory=dict)
    milestones: Milestones | None = None
    durations: dict[str, float | None] = Field(default_factory=dict)
    alerts: list[AlertCount] = Field(default_factory=list)
    postmortem: list[str] = Field(default_factory=list, description="postmortem.md and postmortem.json")
    artifact_dir: str | None = None


class PagerDutyRequest(BaseModel):
    service: str
    key: str = Field(description="Idempotency key: one event per key.")
    action: str = Field(description="trigger | acknowledge | resolve")
    dedup_key: str
    summary: str = ""
    severity: str = Field(default="critical", description="critical | error | warning | info")
    details: dict[str, str] = Field(default_factory=dict)


class IncidentPostmortemRequest(BaseModel):
    service: str
    artifact_dir: str
    incident_id: str
    title: str
    summary: dict[str, Any]
    durations: dict[str, float | None]
    decisions: list[str]
    methods: list[str]
    evidence: list[str]
    timeline: list[TimelineEvent]


# -- rollback drills (runbook 003) ----------------------------------------------------------------
class DrillInput(BaseModel):
    """Input of `DrillWorkflow`. Only `service` is required: `{"service": "web", "kind": "db"}`."""

    service: str
    kind: Literal["app", "db", "all"] = Field(default="all", description="app: roll back on the staging target; "
                                              "db: restore the newest verified backup into a scratch database "
                                              "(and, with database.pitr, recover a point in time on a scratch server); "
                                              "all: every drill the service's config allows.")
    requested_by: str = "schedule"
    reason: str = "scheduled rollback drill"


class StagingTarget(BaseModel):
    """The staging copy an app drill runs on, checked against the production target."""

    service: str = Field(description="The staging service's name in the config.")
    provider: str
    baseline: str = Field(description="docker: image; vercel: deployment; git: 'head of <branch>' (the head when "
                          "the drill starts). What must serve after the drill.")
    problem: str = Field(description="The 'problematic' version deployed over it (git: a commit changing the "
                         "drill's marker file).")


class DrillCheckRequest(BaseModel):
    service: str = Field(description="The staging service.")
    production: str
    baseline: AppVersion


class DrillDeployRequest(BaseModel):
    service: str = Field(description="The staging service: deploys here never touch production.")
    production: str = Field(description="The service drilled; the staging target is checked against it again.")
    image: str = Field(description="StagingTarget.baseline or .problem: the version to deploy.")


class ScratchServerRequest(BaseModel):
    service: str
    key: str = Field(description="The point-in-time recovery's key (its working directory under state_dir/pitr).")


class ScratchDatabaseRequest(BaseModel):
    service: str
    database: str = Field(description="A drill's scratch database, <db>_drill_<8 hex>; nothing else is dropped.")


class DrillMeasure(BaseModel):
    """One drill's measurement, as kept in the shared state store (kind `drills`, one list per service)."""

    service: str
    kind: Literal["app", "db", "pitr"] = Field(description="pitr: the point-in-time recovery of a database drill.")
    method: str = Field(description="docker | compose | vercel | git | database | pitr: whose target time applies.")
    workflow_id: str
    run_id: str
    started_at: datetime
    seconds: float | None = Field(default=None, description="Rollback (app) or restore and checks (db); None "
                                  "when it never got that far.")
    target_seconds: float
    passed: bool
    detail: str = ""
    row_counts: dict[str, int] = Field(default_factory=dict, description="db, pitr: rows per table of the "
                                       "restored copy.")


class DrillRecordRequest(BaseModel):
    service: str
    measures: list[DrillMeasure]


class DrillResult(RunResult):
    # outcome: verified (every drill passed) | failed (the workflow fails too, after alerting)
    kind: str = "all"
    measures: list[DrillMeasure] = Field(default_factory=list)
    earlier: list[DrillMeasure] = Field(default_factory=list, description="Earlier drills of this service, "
                                        "oldest first (the trend).")
    skipped: list[str] = Field(default_factory=list)
    report: str = ""
# ---------------------------------------------------------------------------------------------
# Environment and configuration rollback (runbook 000). Values are secrets: what crosses a
# workflow boundary is names, keyed hashes and a reference to the values in the worker's
# protected state store, never a value.


class EnvSnapshot(BaseModel):
    """The environment one deployment of a service ran with, as history may carry it."""

    service: str
    provider: str
    deployment: str = Field(description="Vercel deployment id, container id: what a person passes as --to.")
    label: str = ""
    taken_at: datetime
    hashes: dict[str, str] = Field(default_factory=dict, description="Variable name -> keyed SHA-256 of its value "
                                   "(the store's own key, so a hash cannot be guessed back into a short value).")
    ref: str = Field(description="Where the values are kept: a file in the worker's protected state store.")
    healthy: bool | None = Field(default=None, description="Health when recorded: a restore target must not be a "
                                 "deployment recorded unhealthy unless named on purpose.")
    reason: str = ""


class EnvReadRequest(BaseModel):
    service: str
    reason: str = "recorded"
    healthy: bool | None = None


class EnvSnapshotRequest(BaseModel):
    service: str
    deployment: str | None = Field(default=None, description="None: the last good one before `current`.")
    current: str = ""


class EnvSetRequest(BaseModel):
    """Set variables to the values behind `ref`, remove others, then redeploy so they apply.

    The one call a key rotation needs: put the new key in the store (`ref`), name it in `names`,
    and the provider sets it and redeploys; undo is the same call with the old snapshot's ref."""

    service: str
    ref: str
    names: list[str] = Field(default_factory=list, description="Variables to set from `ref`; empty: every one in it.")
    remove: list[str] = Field(default_factory=list)
    change_key: str = Field(description="Idempotency key: a retried call redeploys once.")


class EnvSetResult(BaseModel):
    provider: str
    deployment: str = Field(description="What serves with the new environment.")
    set: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict)


class EnvDiff(BaseModel):
    """What changed between two recorded environments: names only."""

    service: str
    base: EnvSnapshot | None = Field(default=None, description="The last good deployment's environment.")
    current: EnvSnapshot
    added: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)
    changed: list[str] = Field(default_factory=list)
    message: str = ""


class EnvRestoreInput(BaseModel):
    """Input of `EnvRollbackWorkflow`: put back the environment a recorded deployment ran with."""

    service: str
    to: str | None = Field(default=None, description="Deployment whose environment to restore (see `rollback env "
                           "diff`); default: the last good one.")
    reason: str = "manual environment rollback"
    dry_run: bool = False
    requested_by: str = "unknown"
    approval_timeout: timedelta = timedelta(minutes=30)
    severity: str = "P1"


class EnvRestoreResult(RunResult):
    # outcome: rolled_back | dry_run | nothing_to_do | rejected | not_approved | failed
    diff: EnvDiff | None = None
    deployment: str | None = Field(default=None, description="What serves the restored environment.")
    artifact_dir: str | None = None


class ConfigRevertInput(BaseModel):
    """Input of `ConfigRevertWorkflow`: config files back to their content at a good commit."""

    service: str
    to: str = Field(description="The last good commit (sha or ref on the branch).")
    paths: list[str] = Field(default_factory=list, description="Default: the service's config_files.paths.")
    reason: str = "manual configuration rollback"
    dry_run: bool = False
    requested_by: str = "unknown"
    approval_timeout: timedelta = timedelta(minutes=30)
    severity: str = "P1"


class ConfigPlanRequest(BaseModel):
    service: str
    commit: str
    paths: list[str] = Field(default_factory=list)


class ConfigPlan(BaseModel):
    """The files that differ between the good commit and the head: names and blob ids, no content."""

    service: str
    commit: str
    head: str
    changed: list[str] = Field(default_factory=list)
    blobs: dict[str, str] = Field(default_factory=dict, description="path -> blob id at the good commit ('' absent)")


class ConfigRevertRequest(BaseModel):
    service: str
    plan: ConfigPlan
    change_key: str
    reason: str = ""


class ConfigRevertResult(RunResult):
    # outcome: rolled_back | dry_run | nothing_to_do | rejected | not_approved | failed
    plan: ConfigPlan | None = None
    commit: str | None = Field(default=None, description="The one revert commit pushed.")
    artifact_dir: str | None = None


# ---------------------------------------------------------------------------------------------
# Key rotation (runbook 002). A key's value never crosses a workflow boundary: history carries
# key names, the ids providers assign, shortened SHA-256 fingerprints and store references.


class KeyRotationInput(BaseModel):
    """Input of `KeyRotationWorkflow`: replace API keys of a service (runbook 002)."""

    service: str
    keys: list[str] = Field(default_factory=list, description="Names from the service's `keys`; empty: all of them.")
    compromised: bool = Field(default=False, description="Revoke first (after approval), accept the downtime, then "
                              "create, set and verify: runbook 002's API key compromise.")
    dry_run: bool = False
    reason: str = "scheduled key rotation"
    requested_by: str = "unknown"
    approval_timeout: timedelta = timedelta(minutes=30)
    key_timeout: timedelta = Field(default=timedelta(hours=4), description="How long to wait for a person to "
                                   "provide a key the provider cannot create by API (then escalate, wait again).")
    severity: str = "P1"


class KeyPlanItem(BaseModel):
    name: str
    provider: str
    env: list[str]
    id_env: str | None = None
    create: str = Field(description="api | person")
    revoke: str = Field(description="api | person")
    test_call: bool = Field(description="Whether a provider call can tell a working key from a revoked one.")
    old_key_id: str | None = None
    old_fingerprint: str | None = Field(default=None, description="sha256:<12 hex> of the key the deployment runs with.")


class KeyPlanRequest(BaseModel):
    service: str
    keys: list[str] = Field(default_factory=list)
    ref: str = Field(description="The captured environment (the old keys are read from it in the worker).")


class NewKey(BaseModel):
    name: str
    key_id: str | None = None
    fingerprint: str
    ref: str = Field(description="Store reference: the deployment variables of this key with their new values.")


class KeyCreateRequest(BaseModel):
    service: str
    key: str
    change_key: str = Field(description="Idempotency key: a retried create makes one key.")


class KeyReference(BaseModel):
    """What `provide_key` takes: where the worker can read the new key, never the key itself."""

    key: str
    reference: str = Field(description="file:/path (readable by the worker), env:NAME (a worker variable) or "
                           "store:REF (written by `rollback keys provide --stdin`).")
    provided_by: str = "unknown"


class KeyAdoptRequest(BaseModel):
    service: str
    key: str
    reference: str
    old_fingerprint: str | None = None


class KeyMergeRequest(BaseModel):
    service: str
    refs: list[str]


class KeyTestRequest(BaseModel):
    service: str
    key: str
    ref: str = Field(description="Store reference holding the key under one of its variables.")


class KeyTestResult(BaseModel):
    key: str
    checked: bool = Field(description="False: the provider has no test call configured.")
    works: bool = False
    detail: str = ""


class KeyRevokeRequest(BaseModel):
    service: str
    key: str
    key_id: str | None = None
    compromised: bool = False


class KeyRevokeResult(BaseModel):
    key: str
    revoked: bool
    detail: str = ""


class KeyRotationResult(RunResult):
    # outcome: rotated | dry_run | rejected | not_approved | compensated | failed
    plan: list[KeyPlanItem] = Field(default_factory=list)
    new_keys: list[NewKey] = Field(default_factory=list)
    revoked: list[str] = Field(default_factory=list)
    deployment: str | None = None
    artifact_dir: str | None = None
