import pytest

from activities.common import redact, redact_env_list
from activities.health import judge, json_path
from workflows.config import HealthCheck, Policy
from workflows.models import AppVersion
from workflows.policy import approval_needed, compare_schema, plan_app_rollback


@pytest.mark.parametrize("rule,automatic,expected", [
    ("never", False, False), ("never", True, False),
    ("manual", False, True), ("manual", True, False),
    ("automatic", False, False), ("automatic", True, True),
    ("always", False, True), ("always", True, True),
])
def test_approval_rules(rule, automatic, expected):
    assert approval_needed(rule, automatic) is expected


def test_schema_ahead_needs_migration_rollback():
    check = compare_schema("3", "5")
    assert check.checked and check.migration_rollback_needed
    assert "ahead of 3" in check.message
    assert not compare_schema("10", "9").migration_rollback_needed  # numeric, not string, order
    assert not compare_schema(None, "5").checked
    assert "could not be made" in compare_schema(None, "5").message
    unknown = compare_schema("3", None, "database unreachable")
    assert not unknown.checked and "database unreachable" in unknown.message


def test_plan_asks_approval_for_schema_rollback_even_when_policy_does_not():
    current = AppVersion(provider="docker", id="sha256:b", label="app:2")
    target = AppVersion(provider="docker", id="sha256:a", label="app:1", schema_version="3")
    plan = plan_app_rollback("web", current, target, compare_schema("3", "4"), Policy(app_approval="never"), True)
    assert plan.needs_approval and any("migration rollback" in step for step in plan.steps)
    plain = plan_app_rollback("web", current, target, compare_schema("3", "3"), Policy(app_approval="never"), True)
    assert not plain.needs_approval


def test_health_judgement_uses_runbook_thresholds():
    check = HealthCheck(url="http://127.0.0.1/h")
    assert judge(check, 200, '{"status":"ok","error_rate":0.04}', None).healthy
    high = judge(check, 200, '{"status":"ok","error_rate":0.06}', None)
    assert not high.healthy and "above the rollback threshold 5.0%" in high.problem
    assert not judge(check, 200, '{"status":"down"}', None).healthy
    assert not judge(check, 503, "not json", None).healthy
    nested = HealthCheck(url="http://x", status_path="checks.0.state", error_rate_path="m.errors")
    snap = judge(nested, 200, '{"checks":[{"state":"pass"}],"m":{"errors":0.5}}', None)
    assert snap.status == "pass" and snap.error_rate == 0.5 and not snap.healthy
    assert json_path({"a": [1, {"b": 2}]}, "a.1.b") == 2 and json_path({"a": 1}, "a.b") is None


def test_redaction_of_secret_looking_names():
    assert redact_env_list(["DB_PASSWORD=x", "PORT=80", "STRIPE_SECRET_KEY=y", "NOVALUE"]) == [
        "DB_PASSWORD=***redacted***", "PORT=80", "STRIPE_SECRET_KEY=***redacted***", "NOVALUE"]
    assert redact({"GITHUB_TOKEN": "t", "REGION": "eu"}) == {"GITHUB_TOKEN": "***redacted***", "REGION": "eu"}


def test_plan_within_cooldown_needs_approval():
    current = AppVersion(provider="vercel", id="dpl_b")
    target = AppVersion(provider="vercel", id="dpl_a")
    plan = plan_app_rollback("web", current, target, compare_schema(None, None), Policy(), True, within_cooldown=True)
    assert plan.needs_approval and "cooldown" in plan.approval_reasons[0]


def test_redaction_by_value():
    from activities.common import redact_text

    text = ("url=postgres://app:hunter22@db:5432/x hook=https://hooks.slack.com/services/T1/B2/abc "
            "discord=https://discord.com/api/webhooks/123/tok-en auth=Bearer abcdefgh12345 "
            "key=AKIAABCDEFGHIJKLMNOP plain=https://example.com/path configured=s3kr3t-value")
    out = redact_text(text, {"s3kr3t-value"})
    for secret in ("hunter22", "T1/B2/abc", "tok-en", "abcdefgh12345", "AKIAABCDEFGHIJKLMNOP", "s3kr3t-value"):
        assert secret not in out, secret
    assert "postgres://app:***redacted***@db:5432/x" in out and "plain=https://example.com/path" in out
    assert redact_env_list(["REDIS_URL=redis://:pw123@h:1", "HOME=/root"]) == [
        "REDIS_URL=redis://:***redacted***@h:1", "HOME=/root"]
