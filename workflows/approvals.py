"""Who may decide an approval: pure policy logic, shared by the workflows (in their Update
handlers) and the worker's `config.service` activity that resolves the policy from the config."""

from __future__ import annotations

from workflows.config import STEP_KINDS, RollbackConfig
from workflows.models import ApproverRules

# Each approval checkpoint's step name, by the kind of step the policy speaks of.
STEP_KIND = {
    "app rollback": "app",
    "env restore": "app",
    "config revert": "app",
    "run down migrations": "database",
    "restore emergency backup": "database",
    "database swap": "database",
    "supabase point-in-time restore": "database",
    "drop kept databases": "database",
    "volume restore": "database",
    "force version": "repair",
    "rotate keys": "key_rotation",
    "incident plan": "incident",
}
DEFAULT_FOUR_EYES = ["database", "repair", "key_rotation"]


def resolve_rules(config: RollbackConfig, service: str) -> ApproverRules | None:
    """The service's policy with groups expanded to names; None when no policy is configured."""
    policy = config.approver_policy(service)
    if policy is None:
        return None
    allowed: dict[str, list[str]] = {}
    for kind in STEP_KINDS:
        approvers = getattr(policy, kind)
        if approvers is None:
            continue
        members = {name for name, person in config.people.items() if set(person.groups) & set(approvers.groups)}
        allowed[kind] = sorted(members | set(approvers.people))
    return ApproverRules(allowed=allowed, four_eyes=list(policy.four_eyes if policy.four_eyes is not None
                                                         else DEFAULT_FOUR_EYES),
                         min_approvers_p0_restore=policy.min_approvers_p0_restore or 1)


def refusal(rules: ApproverRules | None, kinds: list[str], approver: str, requested_by: str, approving: bool,
            already: list[str] = ()) -> str | None:
    """Why `approver` may not decide a step of these kinds, or None when they may. Rejecting one's
    own run is allowed (it changes nothing); approving it is not, for the four-eyes kinds."""
    if rules is None:
        return None
    for kind in kinds:
        allowed = rules.allowed.get(kind)
        if allowed is not None and approver not in allowed:
            names = ", ".join(allowed) or "nobody"
            return (f"{approver} may not decide {kind.replace('_', ' ')} steps of this service (allowed: {names}); "
                    "your decision was not recorded")
    if approving and approver == requested_by and any(kind in rules.four_eyes for kind in kinds):
        return (f"{approver} requested this run and may not approve its own {'/'.join(kinds)} step (four eyes): "
                "someone else must decide; your decision was not recorded")
    if approving and approver in already:  # changing one's mind (a rejection) is allowed
        return f"{approver} already approved this step; another approver is needed; your decision was not recorded"
    return None
