"""Pure decision logic: who must approve what, and what a rollback plan contains.

Deterministic and free of I/O so workflows can call it and unit tests need no Temporal.
"""

from __future__ import annotations

from datetime import datetime, timezone

from workflows.config import AlertRule, HealthCheck, Policy
from workflows.matchers import all_match
from workflows.models import (
    Alert,
    AlertDecision,
    AppVersion,
    BackupManifest,
    DataDamage,
    DataLoss,
    IncidentPlan,
    RollbackPlan,
    SchemaCheck,
)

EXPECTED_DOWNTIME = {
    "docker": "a few seconds: the container is stopped, recreated on the old image and started",
    "compose": "a few seconds: compose recreates the service's container",
    "vercel": "none expected: Vercel switches the production alias atomically",
    "git": "as long as a normal deploy; the old version keeps serving until the revert is live",
}

EXECUTE_STEP = {
    "docker": "recreate the container on image {target} (the old container is kept aside, stopped)",
    "compose": "pin the image to {target} and run `docker-compose up -d --no-deps`",
    "vercel": "instant rollback of the production alias to deployment {target}",
    "git": "git revert back to {target}, push, trigger the deploy",
}


def approval_needed(rule: str, automatic: bool) -> bool:
    """`rule` is a policy value: never, manual, automatic or always."""
    return rule == "always" or (rule == "automatic" and automatic) or (rule == "manual" and not automatic)


def _as_number(value: str) -> int | None:
    return int(value) if value.isdigit() else None


def compare_schema(target_declared: str | None, live: str | None, live_error: str = "") -> SchemaCheck:
    """Is the live database ahead of the schema version the target build expects?"""
    if target_declared is None:
        return SchemaCheck(checked=False, message="target declares no schema version; check could not be made")
    if live is None:
        return SchemaCheck(
            checked=False,
            target_schema_version=target_declared,
            message=f"target expects schema {target_declared} but the live version is unknown"
            + (f" ({live_error})" if live_error else ""),
        )
    a, b = _as_number(live), _as_number(target_declared)
    ahead = (a > b) if a is not None and b is not None else live > target_declared
    if ahead:
        message = (
            f"live database is at schema {live}, ahead of {target_declared} that the target expects: "
            f"a migration rollback to {target_declared} is part of this plan and needs approval"
        )
    else:
        message = f"live schema {live} is compatible with the target's {target_declared}"
    return SchemaCheck(
        checked=True,
        message=message,
        target_schema_version=target_declared,
        live_schema_version=live,
        migration_rollback_needed=ahead,
    )


def plan_app_rollback(
    service: str,
    current: AppVersion,
    target: AppVersion,
    schema: SchemaCheck,
    policy: Policy,
    automatic: bool,
    within_cooldown: bool = False,
) -> RollbackPlan:
    provider = current.provider
    steps = [f"capture state of {current.label or current.id}"]
    reasons = []
    if within_cooldown:  # never a rollback of a rollback without a human
        reasons.append("another automatic rollback of this service ran within its cooldown or hourly cap")
    if schema.migration_rollback_needed:
        steps.append(f"roll back the database schema to {schema.target_schema_version} (migration rollback)")
        reasons.append(schema.message)
    if target.rolled_back_from:
        reasons.append(f"{target.label or target.id} is a version an earlier rollback moved away from: this "
                       "re-deploys a version once rolled back")
    if approval_needed(policy.app_approval, automatic):
        reasons.append(f"policy app_approval={policy.app_approval} for a {'automatic' if automatic else 'manual'} rollback")
    steps.append(EXECUTE_STEP[provider].format(target=target.label or target.id))
    steps.append("verify health, error rate and version; put the original back if verification fails")
    return RollbackPlan(
        service=service,
        provider=provider,
        current=current,
        target=target,
        steps=steps,
        expected_downtime=EXPECTED_DOWNTIME[provider],
        schema_check=schema,
        needs_approval=bool(reasons),
        approval_reasons=reasons,
    )


# ---------------------------------------------------------------------------------------------
# Alerts: severity and the rollback decision matrix (runbook 003's table, runbook 004's triggers)

# The per-source defaults (README, "Alert webhooks"): each source's own severity word -> P0..P3.
SEVERITY_WORDS = {
    "P0": ("p0", "sev0", "sev-0", "emergency", "disaster"),
    "P1": ("p1", "sev1", "sev-1", "critical", "high", "error", "fatal", "page"),
    "P2": ("p2", "sev2", "sev-2", "warning", "medium", "warn"),
    "P3": ("p3", "sev3", "sev-3", "info", "low", "p4", "p5", "debug", "none"),
}
# Issue types the runbooks roll back immediately, whatever the numbers say.
P0_CATEGORIES = ("outage", "system_down", "service_down", "payments", "payment_failure", "data_corruption",
                 "security")


def classify_severity(alert: Alert) -> str:
    """P0..P3 from the alert's own severity, its category, or P1 when nothing says."""
    category = (alert.labels.get("category") or alert.labels.get("issue_type") or "").lower()
    if category in P0_CATEGORIES:
        return "P0"
    for raw in (alert.severity, alert.labels.get("severity"), alert.labels.get("priority")):
        word = (raw or "").strip().lower()
        for level, words in SEVERITY_WORDS.items():
            if word == level.lower() or word in words:
                return level
    return "P1"


def rule_label(where: str, rule: AlertRule) -> str:
    """How answers, logs and the timeline name a rule: its name, else where it is and what it matches."""
    return rule.name or f"{where} {{{', '.join(rule.matchers)}}}"


def decide(alert: Alert, health: HealthCheck, rules: list[tuple[str, AlertRule]] = ()) -> AlertDecision:
    """The configured rules first (first match wins), else the runbooks' matrix; the rule that
    fired, and anything the alert's parsing ignored, are part of the answer."""
    severity = classify_severity(alert)
    notes = list(alert.notes)

    def answer(action: str, rule: str, level: str = severity) -> AlertDecision:
        return AlertDecision(action=action, rule=rule, severity=level, note="; ".join(notes))

    if alert.status == "resolved":
        return answer("resolve", "resolved alerts never start a rollback")
    if alert.status == "acknowledged":
        return answer("acknowledge", "acknowledged in the paging tool: acknowledges the service's open incident")
    if alert.status != "firing":
        return answer("notify", f"{alert.status} notices are recorded, never acted on")
    for where, rule in rules:
        if all_match(rule.matchers, alert.labels):
            return answer(rule.action, rule_label(where, rule), rule.severity or severity)
    if severity == "P0":
        return answer("rollback", "P0 (outage, payments, data corruption, security): roll back now")
    rate = alert.values.get("error_rate")
    p95 = alert.values.get("p95_latency_ms")
    if rate is not None and rate > health.rollback_error_rate:
        return answer("rollback",
                      f"error rate {rate:.1%} above the rollback threshold {health.rollback_error_rate:.1%}")
    if p95 is not None and health.rollback_p95_ms is not None and p95 > health.rollback_p95_ms:
        return answer("rollback", f"p95 latency {p95:g} ms above the rollback threshold {health.rollback_p95_ms:g} ms")
    if severity in ("P2", "P3"):
        return answer("notify", f"{severity}: fix forward, notify only")
    if rate is not None and rate > health.warn_error_rate:
        return answer("watch", f"error rate {rate:.1%} above warning {health.warn_error_rate:.1%} but below rollback")
    return answer("watch", f"{severity} without a value over a rollback threshold: a person decides")


def qualified(table: str) -> str:
    """`public.orders` for `orders`, `"Orders"` or `public.orders`, as table counts name them."""
    parts = [part.strip('"') for part in table.split(".")]
    return ".".join(parts) if len(parts) == 2 else f"public.{parts[0]}"


def row_count_problems(before: dict[str, int], after: dict[str, int], data_loss: list[DataLoss],
                       critical_tables: list[str], bookkeeping: list[str]) -> list[str]:
    """After a migration rollback every table keeps its rows, except what the guard reported
    (tables dropped, rows deleted or truncated) and the `bookkeeping` tables the rollback itself
    writes (tracking table, kill switch table); critical tables must still exist."""
    dropped = {qualified(d.table) for d in data_loss if d.statement == "drop_table"}
    dropped |= {qualified(t) for t in bookkeeping}
    removed: dict[str, int] = {}
    for loss in data_loss:
        if loss.statement in ("delete", "truncate"):
            removed[qualified(loss.table)] = removed.get(qualified(loss.table), 0) + loss.rows
    problems = []
    for table, count in sorted(before.items()):
        if table in dropped:
            continue
        expected = count - removed.get(table, 0)
        if table not in after:
            problems.append(f"table {table} is gone")
        elif after[table] != expected:
            problems.append(f"table {table} has {after[table]} rows, expected {expected}")
    problems += [f"critical table {t} does not exist" for t in critical_tables if qualified(t) not in after]
    return problems


# ---------------------------------------------------------------------------------------------
# Incidents: runbook 001's classification and the combination of rollbacks

# Runbook 001's list and runbook 003's decision matrix, in the words alerts and people use.
P1_TRIGGERS = ("partial_outage", "degradation", "partial_degradation", "migration_rollback_failure",
               "performance", "high_error_rate")
P2_TRIGGERS = ("minor_performance", "feature_failure", "single_feature", "migration_validation")
P3_TRIGGERS = ("cosmetic", "documentation", "non_critical_bug")
P0_EXTRA = ("migration_failure", "data_loss", "no_webhook_processing")


def classify_incident(severity: str | None, trigger: str = "", error_rate: float | None = None) -> tuple[str, str]:
    """The severity and the rule that gave it: a named P0 trigger always wins (a system down is
    P0 whatever someone typed), then an explicit severity, then the error rate, then P1."""
    word = trigger.strip().lower().replace("-", "_").replace(" ", "_")
    if word in P0_CATEGORIES + P0_EXTRA:
        return "P0", f"P0: {word.replace('_', ' ')} (runbook 001: outage, data corruption or loss, security, " \
                     "failed production migration)"
    if severity in ("P0", "P1", "P2", "P3"):
        return severity, f"{severity}: declared by whoever started the incident"
    if error_rate is not None and error_rate > 0.10:
        return "P1", f"P1: error rate {error_rate:.1%} above 10 % (runbook 001)"
    for level, words in (("P1", P1_TRIGGERS), ("P2", P2_TRIGGERS), ("P3", P3_TRIGGERS)):
        if word in words:
            return level, f"{level}: {word.replace('_', ' ')} (runbook 001)"
    return "P1", "P1: nothing says otherwise; a person can lower it"


def backup_before(manifests: list[BackupManifest], moment) -> BackupManifest | None:
    """The newest verified backup taken before `moment` (the destructive migration)."""
    earlier = [m for m in manifests if m.verified and m.created_at < moment]
    return max(earlier, key=lambda m: m.created_at, default=None)


def plan_incident(current: AppVersion | None, target: AppVersion | None, schema: SchemaCheck | None,
                  damage: list[DataDamage], manifests: list[BackupManifest], data_corruption: bool,
                  target_error: str = "") -> IncidentPlan:
    """The combination: app only; app + schema (migration rollback first); and when data was
    destroyed (a corruption trigger, or an up migration since the target that a down script
    cannot undo) a restore from the newest verified backup taken before the damage."""
    plan = IncidentPlan(kind="none")
    parts: list[str] = []
    if schema is not None and schema.migration_rollback_needed:
        plan.migration_target = schema.target_schema_version
        plan.steps.append(f"roll the schema back from {schema.live_schema_version} to "
                          f"{schema.target_schema_version} (MigrationRollbackWorkflow)")
        parts.append("schema")
    if damage or data_corruption:
        plan.damage = damage
        if damage:
            first = min(damage, key=lambda d: d.applied_at or datetime.max.replace(tzinfo=timezone.utc))
            described = "; ".join(f"{d.version} ({d.name}): {d.statement.replace('_', ' ')} on {d.table}"
                                  f"{'.' + d.column if d.column else ''}" for d in damage)
            plan.notes.append(f"data destroyed by up migration(s) {described}: a down script cannot bring those "
                              "values back, only a backup taken before can")
            moment = first.applied_at
            when = f"before {first.version} was applied ({moment.isoformat()}, from the {first.applied_at_source})" \
                if moment else "before the damage"
        else:
            plan.notes.append("the trigger is data corruption: a down script cannot bring values back")
            moment, when = None, "before the corruption"
        chosen = backup_before(manifests, moment) if moment is not None else None
        if chosen is None:
            plan.notes.append(f"no verified backup was taken {when}: the data cannot be restored by this plan")
        else:
            plan.restore_from = chosen.backup_id
            plan.steps.append(f"restore backup {chosen.backup_id} (taken {chosen.created_at.isoformat()}, {when}) "
                              "into a new database, swap it in, re-import the rows newer than it "
                              "(DatabaseRestoreWorkflow; the current database is kept)")
            parts.append("restore")
    if current is not None and target is not None:
        plan.app_from, plan.app_to, plan.app_target = current.label or current.id, target.label or target.id, target.id
        plan.steps.append(f"roll the app back from {plan.app_from} to {plan.app_to} (AppRollbackWorkflow)")
        parts.insert(0, "app")
    elif target_error:
        plan.notes.append(f"no app rollback: {target_error}")
    plan.kind = "+".join(parts) or "none"
    return plan


def rows_lost(before: dict[str, int], after: dict[str, int]) -> list[str]:
    """Runbook 001's verification: critical tables keep their rows through a rollback (a restore
    re-imports the newer ones). One problem per table that has fewer rows than before."""
    return [f"critical table {table} has {after[table]} rows, had {rows} before the rollback"
            for table, rows in before.items() if table in after and after[table] < rows]
