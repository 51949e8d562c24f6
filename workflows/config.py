"""The configuration of the services a team protects: pydantic models and the YAML loader.

Secrets never appear here as values: the config names an environment variable (``*_env``)
and activities resolve it inside the worker, so nothing secret reaches workflow history.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from workflows.matchers import MatcherError, parse_matchers

CONFIG_ENV_VAR = "ROLLBACK_CONFIG"


class ConfigError(Exception):
    """A configuration problem, with a message that names the file, service and field."""


class _Strict(BaseModel):
    # A typo'd field is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")


class DockerTarget(_Strict):
    container: str
    docker_host: str | None = Field(
        default=None, description="Engine address; defaults to DOCKER_HOST or the local socket."
    )
    stop_timeout: int = 10
    volume_backup_dir: str | None = Field(default=None, description="Where volume tars go; default "
                                          "<state_dir>/volume-backups/<service>.")


class ComposeTarget(_Strict):
    project: str
    service: str
    file: str
    image_env: str = Field(description="Variable the compose file uses for the image reference.")
    docker_host: str | None = None


class VercelTarget(_Strict):
    project: str
    team: str | None = None
    token_env: str = "VERCEL_TOKEN"
    api_url: str = "https://api.vercel.com"
    schema_meta_key: str = "schemaVersion"
    poll_interval_seconds: float = Field(default=1.0, gt=0, le=5)  # must stay under the 10 s heartbeat
    poll_timeout_seconds: float = 180.0


class GitTarget(_Strict):
    repo: str = Field(description="Clone URL or path of the remote the deploy is built from.")
    branch: str = "main"
    deploy_hook_url_env: str | None = None
    deploy_command: list[str] | None = None
    schema_file: str | None = Field(default=None, description="File in the tree naming the schema version.")


class ConfigFiles(_Strict):
    """Runbook 000's "Configuration Rollback": files such as vercel.json reverted on their own,
    with one commit in the service's git repository, then deployed like a git revert."""

    paths: list[str] = Field(default_factory=lambda: ["vercel.json", "next.config.js"],
                             description="Paths in the repository, relative to its root.")
    git: GitTarget | None = Field(default=None, description="The repository and deploy trigger; default the "
                                  "service's app.git section.")


class AppTarget(_Strict):
    provider: Literal["docker", "compose", "vercel", "git"]
    docker: DockerTarget | None = None
    compose: ComposeTarget | None = None
    vercel: VercelTarget | None = None
    git: GitTarget | None = None

    @model_validator(mode="after")
    def _provider_section_present(self) -> "AppTarget":
        if getattr(self, self.provider) is None:
            raise ValueError(f"provider is {self.provider!r} but the '{self.provider}' section is missing")
        return self


class HealthCheck(_Strict):
    url: str
    version_url: str | None = None
    status_path: str | None = "status"
    healthy_values: list[str] = Field(default_factory=lambda: ["ok", "healthy", "up", "pass"])
    error_rate_path: str | None = "error_rate"
    database_path: str | None = "database"
    # The runbooks' thresholds: roll back above 5 % errors, warn above 1 %.
    rollback_error_rate: float = 0.05
    warn_error_rate: float = 0.01
    rollback_p95_ms: float | None = Field(default=None, description="Roll back when an alert reports p95 above this.")
    consecutive_checks: int = Field(default=3, ge=1)
    interval_seconds: float = Field(default=2.0, gt=0)
    timeout_seconds: float = Field(default=5.0, gt=0)
    smoke_urls: list[str] = Field(default_factory=list)


class SupabasePitr(_Strict):
    """Supabase's own point-in-time restore, through its Management API (restores in place)."""

    project_ref: str
    token_env: str = "SUPABASE_ACCESS_TOKEN"
    api_url: str = "https://api.supabase.com"
    poll_interval_seconds: float = Field(default=5.0, gt=0, le=10)


class PitrConfig(_Strict):
    """Point-in-time recovery. Self-hosted: base backups (pg_basebackup) plus the WAL the cluster's
    `archive_command` copies into `wal_archive_dir`. Supabase: the `supabase` section."""

    base_backup_dir: str | None = None
    wal_archive_dir: str | None = None
    supabase: SupabasePitr | None = None
    bin_dir: str = "/usr/lib/postgresql/15/bin"
    run_as: str | None = Field(default=None, description="OS user for the recovered server; when the worker "
                               "runs as root, default postgres (the server refuses to run as root).")
    recovery_timeout: timedelta = timedelta(hours=2)

    @model_validator(mode="after")
    def _one_kind(self) -> "PitrConfig":
        if (self.supabase is None) == (self.base_backup_dir is None or self.wal_archive_dir is None):
            raise ValueError("give either base_backup_dir and wal_archive_dir (self-hosted) or supabase")
        return self


class DatabaseConfig(_Strict):
    dsn_env: str
    migration_tool: Literal["golang-migrate", "dbmate", "alembic", "prisma", "plain"] | None = None
    migrations_dir: str | None = Field(default=None, description="The tool's migrations; for Alembic the folder "
                                       "holding alembic.ini. Relative paths start at the config file's folder.")
    critical_tables: list[str] = Field(default_factory=list, description="Must exist after a rollback; a plan that "
                                       "drops one is refused.")
    verify_sql: list[str] = Field(default_factory=list, description="Queries that must return true after a rollback.")
    lock_timeout: timedelta = Field(default=timedelta(seconds=5), description="Per down migration: give up rather "
                                    "than queue behind the app's locks.")
    statement_timeout: timedelta = timedelta(minutes=5)
    pitr: PitrConfig | None = None
    dump_format: Literal["custom", "directory"] = Field(default="custom", description="directory: pg_dump -Fd -j "
                                                        "dump_jobs, faster on big databases with several cores.")
    dump_jobs: int = Field(default=2, ge=1, le=64)
    backup_dir: str | None = None
    keep_backups: int = Field(default=10, ge=1, description="Retention: keep at least this many newest backups.")
    keep_backups_for: timedelta = Field(default=timedelta(days=7), description="…and every backup younger than this.")
    recent_data_columns: list[str] = Field(default_factory=lambda: ["created_at", "updated_at"],
                                           description="Timestamp columns that tell which rows are newer than a backup.")


class KillSwitch(_Strict):
    """A runtime flag the app reads (runbook 001's PROCESSING_ENABLED). A Vercel env var is not
    one: it only applies to the next deployment."""

    name: str
    store: Literal["postgres", "http"]
    off_value: str = "false"
    table: str = Field(default="rollback_flags", description="postgres store: table (name text primary key, value text).")
    dsn_env: str | None = Field(default=None, description="postgres store: defaults to the service database's DSN.")
    url: str | None = Field(default=None, description="http store: base URL; the flag lives at <url>/<name>.")
    token_env: str | None = Field(default=None, description="http store: bearer token for writes.")

    @model_validator(mode="after")
    def _store_settings(self) -> "KillSwitch":
        if self.store == "http" and not self.url:
            raise ValueError(f"kill switch {self.name!r}: the http store needs a url")
        return self


class StatuspageTarget(_Strict):
    page_id: str
    api_key_env: str
    component_id: str | None = None
    api_url: str = "https://api.statuspage.io/v1"


class PagerDutyTarget(_Strict):
    """PagerDuty Events API v2: pages on-call when an incident is not acknowledged in time."""

    routing_key_env: str
    api_url: str = "https://events.pagerduty.com"


class NotifyConfig(_Strict):
    slack_webhook_env: str | None = None
    escalation_slack_webhook_env: str | None = None
    statuspage: StatuspageTarget | None = None
    pagerduty: PagerDutyTarget | None = None


SEVERITIES = ("P0", "P1", "P2", "P3")


class IncidentConfig(_Strict):
    """Runbook 001's response times and update cadences per severity, and what "assess" and
    "verify" look at."""

    response_times: dict[Literal["P0", "P1", "P2", "P3"], timedelta] = Field(default_factory=lambda: {
        "P0": timedelta(minutes=5), "P1": timedelta(minutes=15), "P2": timedelta(hours=1), "P3": timedelta(hours=4)},
        description="Escalate (escalation Slack webhook, PagerDuty) when nobody acknowledged within this.")
    update_cadence: dict[Literal["P0", "P1", "P2", "P3"], timedelta] = Field(default_factory=lambda: {
        "P0": timedelta(minutes=15), "P1": timedelta(minutes=30), "P2": timedelta(hours=1), "P3": timedelta(hours=4)},
        description="How often the incident posts an update to Slack.")
    critical_endpoints: list[str] = Field(default_factory=list, description="URLs such as /api/health/db that "
                                          "assess and verify call; 2xx is healthy.")
    watch_period: timedelta = Field(default=timedelta(minutes=5), description="After the switches are back: watch "
                                    "this long before resolving.")
    slowdown_factor: float = Field(default=3.0, gt=1, description="Verify fails when the health endpoint answers "
                                   "this many times slower than at the start of the incident.")

    @model_validator(mode="after")
    def _every_severity(self) -> "IncidentConfig":
        defaults = IncidentConfig.model_fields
        for name in ("response_times", "update_cadence"):
            given = getattr(self, name)
            setattr(self, name, {**defaults[name].default_factory(), **given})
        return self


class Policy(_Strict):
    auto_rollback: bool = True
    app_approval: Literal["never", "manual", "automatic", "always"] = Field(
        default="never",
        description="Which app rollbacks wait for a human: started by a person, by an alert, both or none.",
    )
    database_approval: Literal["never", "manual", "automatic", "always"] = "always"
    approval_timeout: timedelta = timedelta(minutes=30)
    cooldown: timedelta = timedelta(hours=1)
    watch_after_rollback: timedelta = Field(
        default=timedelta(minutes=5), description="An alert-started rollback waits this long for the alert to resolve."
    )
    max_auto_rollbacks_per_hour: int = 1


class AlertRule(_Strict):
    """One decision rule: alerts whose labels match all `matchers` get `action` (first match wins)."""

    name: str | None = Field(default=None, description="Shown in answers, logs and the timeline.")
    matchers: list[str] = Field(default_factory=list, description="Alertmanager matchers, e.g. "
                                'alertname="HighErrorRate" or severity=~"critical|page"; none: every alert.')
    severity: Literal["P0", "P1", "P2", "P3"] | None = Field(default=None, description="Default: the "
                                                              "source's own severity, mapped to P0-P3.")
    action: Literal["rollback", "incident", "watch", "notify"]

    @model_validator(mode="after")
    def _matchers_parse(self) -> "AlertRule":
        for text in self.matchers:
            try:
                parse_matchers(text)
            except MatcherError as exc:
                raise ValueError(f"rule {self.name or '(unnamed)'}: invalid matcher {exc}") from None
        return self


class ServiceAlerts(_Strict):
    rules: list[AlertRule] = Field(default_factory=list, description="Tried before the top-level rules.")


class AlertsConfig(ServiceAlerts):
    """How alerts are read and decided, for every service."""

    value_annotation: str = Field(default="value", description="Alertmanager/Grafana annotation holding the "
                                  "alert's value (an error rate).")
    grafana_value_ref: str = Field(default="B", description="Grafana: the refId in `values` / `valueString` "
                                   "holding the value (used when there are several).")
    value_unit: Literal["ratio", "percent"] = Field(default="ratio", description="ratio: 0.23 is 23 %; "
                                                    "percent: 23 is 23 %. A value ending in % is always percent.")
    incident_severities: list[Literal["P0", "P1", "P2", "P3"]] = Field(
        default_factory=list, description="A rollback decision at one of these severities declares an incident "
        "instead (runbook 001 end to end; its plan's approval then comes first). Empty: rollback decisions start "
        "the app rollback at once, as the rules say.")


STEP_KINDS = ("app", "database", "repair", "key_rotation", "incident")


class Approvers(_Strict):
    """Who may decide one kind of step: people by name, and everyone in the named groups."""

    people: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)


class ApprovalPolicy(_Strict):
    """Approvers per step kind. A kind without an entry here (nor at the top level) is open to
    anyone named; a configured kind admits only its people and groups."""

    app: Approvers | None = None
    database: Approvers | None = None
    repair: Approvers | None = None
    key_rotation: Approvers | None = None
    incident: Approvers | None = None
    four_eyes: list[Literal["app", "database", "repair", "key_rotation", "incident"]] | None = Field(
        default=None, description="Kinds the person who requested the run may not approve (default: database, "
        "repair, key_rotation).")
    min_approvers_p0_restore: int | None = Field(default=None, ge=1, le=5, description="Distinct approvers a "
                                                 "restore at severity P0 needs (default 1).")


class Person(_Strict):
    slack: str | None = Field(default=None, description="Slack user ID (U…), for approvals from Slack buttons.")
    groups: list[str] = Field(default_factory=list)


class SlackApp(_Strict):
    """The Slack app whose Approve / Reject buttons reach the receiver's /slack/actions."""

    signing_secret_env: str = "SLACK_SIGNING_SECRET"


DRILL_TARGET_DEFAULTS = {
    # runbook 003's target times; a container recreate is as quick as Vercel's instant rollback
    "vercel": timedelta(minutes=3), "docker": timedelta(minutes=3), "compose": timedelta(minutes=3),
    "git": timedelta(minutes=8), "database": timedelta(minutes=20)}


class DrillConfig(_Strict):
    """Runbook 003's rollback drills. The app drill runs on a staging copy of the service, never on
    the service itself: `staging_service` names another service in this file, with an app target of
    the same provider kind and its own health check."""

    staging_service: str | None = Field(default=None, description="Service entry the app drill deploys to and "
                                        "rolls back; refused when missing or when its target is this service's.")
    baseline_image: str | None = Field(default=None, description="docker: the known good image the drill "
                                       "deploys first and expects back after the rollback.")
    problem_image: str | None = Field(default=None, description="docker: the 'problematic' image with a known "
                                      "benign issue, deployed over the baseline.")
    baseline_deployment: str | None = Field(default=None, description="vercel: id or URL of the staging project's "
                                            "known good production deployment, promoted first and expected back.")
    problem_deployment: str | None = Field(default=None, description="vercel: id or URL of the 'problematic' "
                                           "deployment (a known benign issue), promoted over the baseline.")
    problem_file: str = Field(default="ROLLBACK_DRILL", description="git: the marker file the drill's problem "
                              "commit writes (path in the staging repository) on top of the branch's head.")
    pitr_age: timedelta = Field(default=timedelta(hours=1), gt=timedelta(0), description=(
        "With database.pitr (self-hosted): the database drill also recovers the database as it was this long "
        "before the drill started. A base backup must have finished before that time and the WAL after it be "
        "archived (archive_timeout), else the drill fails: that PITR target could not be restored."))
    targets: dict[Literal["vercel", "docker", "compose", "git", "database", "pitr"], timedelta] = Field(
        default_factory=lambda: dict(DRILL_TARGET_DEFAULTS),
        description="Target time per method; a slower drill is an alert. Unset ones keep the runbook's; "
        "pitr (the point-in-time recovery) defaults to the database target.")

    @model_validator(mode="after")
    def _every_target(self) -> "DrillConfig":
        parts = self.problem_file.replace("\\", "/").split("/")
        if self.problem_file.startswith("/") or ".." in parts or ".git" in parts or not self.problem_file.strip():
            raise ValueError(f"drill.problem_file {self.problem_file!r} must be a path inside the repository")
        # a point-in-time recovery is a database restore: runbook 003's database target unless set
        database = self.targets.get("database", DRILL_TARGET_DEFAULTS["database"])
        self.targets = {**DRILL_TARGET_DEFAULTS, "pitr": database, **self.targets}
        return self


def same_app_target(a: AppTarget, b: AppTarget) -> bool:
    """Whether two app targets are the same thing in the world (so a drill on one hits the other)."""
    if a.provider != b.provider:
        return False
    if a.provider == "docker":
        return a.docker.container == b.docker.container and a.docker.docker_host == b.docker.docker_host
    if a.provider == "compose":
        return (a.compose.project, a.compose.service, a.compose.docker_host) == (
            b.compose.project, b.compose.service, b.compose.docker_host)
    if a.provider == "vercel":
        return (a.vercel.project, a.vercel.team, a.vercel.api_url) == (b.vercel.project, b.vercel.team, b.vercel.api_url)
    return (a.git.repo, a.git.branch) == (b.git.repo, b.git.branch)


KEY_PROVIDERS = ("twilio", "stripe", "supabase", "openai", "generic")
KEY_API_URLS = {"twilio": "https://api.twilio.com", "stripe": "https://api.stripe.com",
                "supabase": "https://api.supabase.com", "openai": "https://api.openai.com"}
# what `kind` may be per provider; the first is the default
KEY_KINDS = {"supabase": ("secret", "publishable", "legacy_anon", "legacy_service_role"),
             "openai": ("project", "admin")}


class RotatedKey(_Strict):
    """One API key of a service that `rollback keys rotate` replaces (runbook 002). Only names
    are here: the key itself lives in the deployment's environment and the provider."""

    name: str = Field(description="What people pass as --key, e.g. STRIPE_SECRET_KEY.")
    provider: Literal["twilio", "stripe", "supabase", "openai", "generic"] = Field(
        description="twilio, supabase, openai: created and revoked through their APIs; stripe, generic: a person "
        "creates the new key and revokes the old one (no GA API), the workflow sets, verifies and checks.")
    env: list[str] = Field(default_factory=list, description="Deployment variables holding the key; default [name].")
    id_env: str | None = Field(default=None, description="Deployment variable holding the key's id, set to the "
                               "new id (Twilio: the SK… sid used with the secret; Supabase, OpenAI: the id the "
                               "old key is revoked by; without it a person revokes the old key).")
    admin_token_env: str | None = Field(default=None, description="Worker variable with the credential that "
                                        "creates and revokes keys (Twilio: the account's auth token; Supabase: a "
                                        "personal access token; OpenAI: an admin key).")
    account: str | None = Field(default=None, description="Twilio: the account SID (AC…).")
    project: str | None = Field(default=None, description="Supabase: the project ref; OpenAI: the project id "
                                "(proj_…) of a project key.")
    kind: str | None = Field(default=None, description="Supabase: secret (default), publishable, legacy_anon or "
                             "legacy_service_role; OpenAI: project (default) or admin.")
    service_account: str | None = Field(default=None, description="OpenAI project keys: the service account "
                                        "(svc_acct_…) the new key is made for.")
    api_url: str | None = Field(default=None, description="Provider API base; default its public API.")
    test_url: str | None = Field(default=None, description="The GET that tells a working key from a revoked one. "
                                 "generic: must answer 2xx with `Authorization: Bearer <key>` (the provider's "
                                 "whoami), none: app health only; supabase: default https://<project>.supabase.co"
                                 "/rest/v1/ (header apikey); openai: default <api_url>/v1/models (admin keys: "
                                 "<api_url>/v1/organization/admin_api_keys?limit=1).")

    @model_validator(mode="after")
    def _complete(self) -> "RotatedKey":
        if not self.env:
            self.env = [self.name]
        needed = {"twilio": ("account", "admin_token_env", "id_env"), "supabase": ("project", "admin_token_env"),
                  "openai": ("admin_token_env",)}.get(self.provider, ())
        if self.provider == "openai" and (self.kind or "project") == "project":
            needed += ("project", "service_account")
        missing = [f for f in needed if not getattr(self, f)]
        if missing:
            raise ValueError(f"key {self.name}: {self.provider} needs {', '.join(missing)}")
        kinds = KEY_KINDS.get(self.provider)
        if kinds is None:
            if self.kind is not None:
                raise ValueError(f"key {self.name}: `kind` is for supabase and openai keys, not {self.provider}")
        elif self.kind is None:
            self.kind = kinds[0]
        elif self.kind not in kinds:
            raise ValueError(f"key {self.name}: {self.provider} kind is one of {', '.join(kinds)}, not {self.kind!r}")
        return self

    def base_url(self) -> str:
        return (self.api_url or KEY_API_URLS.get(self.provider, "")).rstrip("/")


class ServiceConfig(_Strict):
    alert_match: dict[str, str] = Field(
        default_factory=dict,
        description="Labels/tags an alert must carry to belong to this service; default: service=<name>.",
    )
    alerts: ServiceAlerts = Field(default_factory=ServiceAlerts)
    app: AppTarget
    health: HealthCheck
    database: DatabaseConfig | None = None
    kill_switches: list[KillSwitch] = Field(default_factory=list)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    policy: Policy = Field(default_factory=Policy)
    incident: IncidentConfig = Field(default_factory=IncidentConfig)
    approvals: ApprovalPolicy | None = Field(default=None, description="Per step kind, overrides the top-level "
                                             "`approvals`; filled in from it when loaded.")
    drill: DrillConfig | None = Field(default=None, description="Runbook 003's rollback drills (staging target, "
                                      "images, target times).")
    config_files: ConfigFiles | None = None
    keys: list[RotatedKey] = Field(default_factory=list, description="API keys `rollback keys rotate` replaces.")

    @model_validator(mode="after")
    def _config_files_have_a_repo(self) -> "ServiceConfig":
        if self.config_files is not None and self.config_files.git is None and self.app.git is None:
            raise ValueError("config_files needs a `git` section (repo, branch, deploy trigger) unless the app's "
                             "provider is git")
        return self

    def config_repo(self) -> GitTarget | None:
        """Where the service's config files live: their own section, else the app's repository."""
        if self.config_files is None:
            return None
        return self.config_files.git or self.app.git

    def secret_env_names(self) -> list[str]:
        """Every environment variable this service needs at run time."""
        names: list[str | None] = []
        if self.app.vercel:
            names.append(self.app.vercel.token_env)
        if self.app.git:
            names.append(self.app.git.deploy_hook_url_env)
        if self.config_files and self.config_files.git:
            names.append(self.config_files.git.deploy_hook_url_env)
        if self.database:
            names.append(self.database.dsn_env)
            if self.database.pitr and self.database.pitr.supabase:
                names.append(self.database.pitr.supabase.token_env)
        names += [s.dsn_env for s in self.kill_switches] + [s.token_env for s in self.kill_switches]
        names += [self.notify.slack_webhook_env, self.notify.escalation_slack_webhook_env]
        if self.notify.statuspage:
            names.append(self.notify.statuspage.api_key_env)
        if self.notify.pagerduty:
            names.append(self.notify.pagerduty.routing_key_env)
        names += [key.admin_token_env for key in self.keys]
        return [n for n in names if n]


class WebhookSource(_Strict):
    """How one alert source authenticates. Each variable may hold several comma-separated
    values, all accepted, so secrets can be rotated without dropping alerts."""

    bearer_env: str | None = None  # Authorization: Bearer <token>
    basic_env: str | None = None  # "user:password" for Authorization: Basic
    secret_env: str | None = None  # HMAC key (Sentry, PagerDuty) or shared header secret (Datadog)
    header: str = "X-Webhook-Secret"  # Datadog: the custom header carrying the shared secret


class WebhookConfig(_Strict):
    notify_only: bool = Field(default=False, description="Global switch: automatic actions become dry runs.")
    max_body_bytes: int = 1 << 20
    replay_ttl: timedelta = Field(default=timedelta(hours=24), description="How long a delivery is remembered "
                                  "(in <state_dir>/webhook/deliveries.sqlite) so a retry of it is a replay.")
    sources: dict[Literal["alertmanager", "grafana", "sentry", "datadog", "pagerduty", "generic"], WebhookSource] = (
        Field(default_factory=dict)
    )


class FlagEndpoint(_Strict):
    """The receiver's HTTP flag store (`/flags/<service>/<name>`): anyone may read, writes need the token."""

    token_env: str | None = None


class RollbackConfig(_Strict):
    state_dir: str = "var/state"
    state_dsn_env: str | None = Field(default=None, description="Variable holding a PostgreSQL DSN for the shared "
                                      "state store (ledgers, idempotency records); unset: <state_dir>/state.sqlite.")
    state_retention_days: float = Field(default=30, gt=0, description="Idempotency records and the artifacts index "
                                        "older than this are pruned when a worker starts.")
    artifact_dir: str = "var/incidents"
    webhooks: WebhookConfig = Field(default_factory=WebhookConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    flags: FlagEndpoint = Field(default_factory=FlagEndpoint)
    services: dict[str, ServiceConfig] = Field(default_factory=dict)
    people: dict[str, Person] = Field(default_factory=dict, description="Who may be named as an approver.")
    approvals: ApprovalPolicy | None = None
    slack: SlackApp | None = None
    audit_log: str | None = Field(default=None, description="JSON-lines audit file; default <state_dir>/audit.jsonl.")

    @model_validator(mode="after")
    def _approvers_known(self) -> "RollbackConfig":
        groups = {g for person in self.people.values() for g in person.groups}
        policies = [("approvals", self.approvals)] + [(f"services.{name}.approvals", s.approvals)
                                                       for name, s in self.services.items()]
        for where, policy in policies:
            for kind in STEP_KINDS:
                allowed = getattr(policy, kind) if policy else None
                for name in allowed.people if allowed else []:
                    if name not in self.people:
                        raise ValueError(f"{where}.{kind}: unknown person {name!r} (add them under `people:`)")
                for group in allowed.groups if allowed else []:
                    if group not in groups:
                        raise ValueError(f"{where}.{kind}: no person is in group {group!r}")
        slack_ids = [p.slack for p in self.people.values() if p.slack]
        if len(slack_ids) != len(set(slack_ids)):
            raise ValueError("people: a Slack user ID is given to two people")
        return self

    def approver_policy(self, service: str) -> "ApprovalPolicy | None":
        """The service's policy, each kind and setting falling back to the top level's."""
        own, top = self.services[service].approvals, self.approvals
        if own is None and top is None:
            return None
        merged = {field: getattr(own, field, None) if getattr(own, field, None) is not None else getattr(top, field, None)
                  for field in ApprovalPolicy.model_fields}
        return ApprovalPolicy(**merged)

    def service_for(self, labels: dict[str, str]) -> str | None:
        """The service an alert belongs to, by each service's label matchers (or service=<name>)."""
        for name, service in self.services.items():
            wanted = service.alert_match or {"service": name}
            if all(labels.get(k) == v for k, v in wanted.items()):
                return name
        return None

    def alert_rules(self, service: str | None) -> list[tuple[str, AlertRule]]:
        """The rules an alert of `service` is decided by, in order, each with where it is written."""
        own = self.services[service].alerts.rules if service in self.services else []
        return ([(f"services.{service}.alerts.rules[{i}]", rule) for i, rule in enumerate(own)]
                + [(f"alerts.rules[{i}]", rule) for i, rule in enumerate(self.alerts.rules)])

    def drill_staging_problem(self, service: str) -> str | None:
        """Why an app drill of `service` must not run (None: its staging target is fit for one)."""
        own = self.service(service)
        drill = own.drill
        if drill is None or not drill.staging_service:
            return (f"service {service!r} has no drill staging target: add `drill: {{staging_service: NAME}}` naming "
                    "a staging copy of it in the config; app drills never run against production")
        staging = self.services.get(drill.staging_service)
        if staging is None:
            return f"service {service!r}: drill.staging_service {drill.staging_service!r} is not a configured service"
        if drill.staging_service == service or same_app_target(own.app, staging.app):
            return (f"service {service!r}: drill.staging_service {drill.staging_service!r} points at the production "
                    "target itself; refusing to drill on production")
        if staging.app.provider != own.app.provider:
            return (f"service {service!r}: staging {drill.staging_service!r} is a {staging.app.provider} target but "
                    f"production is {own.app.provider}; a drill must rehearse the same method")
        if own.app.provider == "compose":
            return (f"service {service!r}: app drills deploy the baseline and the problem version on docker, vercel "
                    "and git targets, not compose")
        if own.app.provider == "docker" and not (drill.baseline_image and drill.problem_image):
            return f"service {service!r}: a docker drill needs drill.baseline_image and drill.problem_image"
        if own.app.provider == "vercel" and not (drill.baseline_deployment and drill.problem_deployment):
            return (f"service {service!r}: a vercel drill needs drill.baseline_deployment and "
                    "drill.problem_deployment (deployments of the staging project)")
        return None

    def service(self, name: str) -> ServiceConfig:
        try:
            return self.services[name]
        except KeyError:
            known = ", ".join(sorted(self.services)) or "none"
            raise ConfigError(f"unknown service {name!r} (configured: {known})") from None


def _describe(error: dict) -> str:
    where = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown field (check the spelling)"
    if error["type"] == "missing":
        return f"{where}: required field is missing"
    return f"{where}: {error['msg'].removeprefix('Value error, ')}"


def config_path(explicit: str | os.PathLike | None = None) -> Path:
    """The config file: the explicit path, else $ROLLBACK_CONFIG, else ./rollback.yaml."""
    return Path(explicit or os.environ.get(CONFIG_ENV_VAR) or "rollback.yaml")


def load_config(path: str | os.PathLike | None = None, require_services: bool = False) -> RollbackConfig:
    """Read and validate the YAML config; relative directories resolve against the file's folder.
    The worker needs services to act on; a receiver serving only the flag store does not."""
    import yaml

    file = config_path(path)
    try:
        raw = yaml.load(file.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    except FileNotFoundError:
        raise ConfigError(f"{file}: config file not found (pass --config or set {CONFIG_ENV_VAR})") from None
    except IsADirectoryError:
        raise ConfigError(f"{file}: is a directory, not a config file (pass the YAML file itself)") from None
    except PermissionError:
        raise ConfigError(f"{file}: cannot be read (permission denied)") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 text (byte {exc.start}); save the config as UTF-8") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: expected a mapping at the top level")
    if require_services and not raw.get("services"):
        raise ConfigError(f"{file}: defines no services; add a `services:` mapping with at least one service "
                          "(see the README's Configuration section)")
    try:
        config = RollbackConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        raise ConfigError(f"{file}: {problems}") from None
    base = file.resolve().parent
    # `rollback up` points these at its data directory, whatever the file says.
    config.state_dir = str((base / os.environ.get("ROLLBACK_STATE_DIR", config.state_dir)).resolve())
    config.artifact_dir = str((base / os.environ.get("ROLLBACK_ARTIFACT_DIR", config.artifact_dir)).resolve())
    if config.audit_log:
        config.audit_log = str((base / config.audit_log).resolve())
    for service in config.services.values():
        # Directories the worker writes and the CLI lists resolve alike, whatever each one's cwd.
        if service.database and service.database.backup_dir:
            service.database.backup_dir = str((base / service.database.backup_dir).resolve())
        if service.app.docker and service.app.docker.volume_backup_dir:
            service.app.docker.volume_backup_dir = str((base / service.app.docker.volume_backup_dir).resolve())
        if service.database and service.database.migrations_dir:
            service.database.migrations_dir = str((base / service.database.migrations_dir).resolve())
        if service.database and service.database.pitr and not service.database.pitr.supabase:
            pitr = service.database.pitr
            pitr.base_backup_dir = str((base / pitr.base_backup_dir).resolve())
            pitr.wal_archive_dir = str((base / pitr.wal_archive_dir).resolve())
    return config


def missing_secrets(config: RollbackConfig, environ: dict[str, str] | None = None) -> list[str]:
    """Lines naming each service's secret variables that are not set."""
    env = os.environ if environ is None else environ
    shared = ([f"state_dsn_env: environment variable {config.state_dsn_env} is not set"]
              if config.state_dsn_env and not env.get(config.state_dsn_env) else [])
    return shared + [
        f"service {name!r}: environment variable {var} is not set"
        for name, service in sorted(config.services.items())
        for var in service.secret_env_names()
        if not env.get(var)
    ]
