"""Pure decision logic: who must approve what, and what a rollback plan contains.

Deterministic and free of I/O so workflows can call it and unit tests need no Temporal.
"""

from __future__ import annotations

from workflows.config import HealthCheck, Policy
from workflows.models import Alert, AlertDecision, AppVersion, DataLoss, RollbackPlan, SchemaCheck

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

SEVERITY_WORDS = {
    "P0": ("p0", "sev0", "sev-0", "emergency", "disaster"),
    "P1": ("p1", "sev1", "sev-1", "critical", "high", "error"),
    "P2": ("p2", "sev2", "sev-2", "warning", "medium", "warn"),
    "P3": ("p3", "sev3", "sev-3", "info", "low", "p4", "p5"),
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


def decide(alert: Alert, health: HealthCheck) -> AlertDecision:
    """Roll back, watch, or notify; the rule that fired is part of the answer."""
    severity = classify_severity(alert)
    if alert.status == "resolved":
        return AlertDecision(action="resolve", rule="resolved alerts never start a rollback", severity=severity)
    if severity == "P0":
        return AlertDecision(action="rollback", rule="P0 (outage, payments, data corruption, security): roll back now",
                             severity=severity)
    rate = alert.values.get("error_rate")
    p95 = alert.values.get("p95_latency_ms")
    if rate is not None and rate > health.rollback_error_rate:
        return AlertDecision(action="rollback", severity=severity,
                             rule=f"error rate {rate:.1%} above the rollback threshold {health.rollback_error_rate:.1%}")
    if p95 is not None and health.rollback_p95_ms is not None and p95 > health.rollback_p95_ms:
        return AlertDecision(action="rollback", severity=severity,
                             rule=f"p95 latency {p95:g} ms above the rollback threshold {health.rollback_p95_ms:g} ms")
    if severity in ("P2", "P3"):
        return AlertDecision(action="notify", rule=f"{severity}: fix forward, notify only", severity=severity)
    if rate is not None and rate > health.warn_error_rate:
        return AlertDecision(action="watch", severity=severity,
                             rule=f"error rate {rate:.1%} above warning {health.warn_error_rate:.1%} but below rollback")
    return AlertDecision(action="watch", severity=severity,
                         rule=f"{severity} without a value over a rollback threshold: a person decides")


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
