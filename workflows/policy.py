"""Pure decision logic: who must approve what, and what a rollback plan contains.

Deterministic and free of I/O so workflows can call it and unit tests need no Temporal.
"""

from __future__ import annotations

from workflows.config import Policy
from workflows.models import AppVersion, RollbackPlan, SchemaCheck

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
) -> RollbackPlan:
    provider = current.provider
    steps = [f"capture state of {current.label or current.id}"]
    reasons = []
    if schema.migration_rollback_needed:
        steps.append(f"roll back the database schema to {schema.target_schema_version} (migration rollback)")
        reasons.append(schema.message)
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
