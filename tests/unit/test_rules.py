"""Decision rules in Alertmanager's matcher syntax: parsing, matching, order, config errors."""

from __future__ import annotations

import pytest

from workflows.config import ConfigError, HealthCheck, RollbackConfig, load_config
from workflows.matchers import MatcherError, all_match, parse_matchers
from workflows.models import Alert
from workflows.policy import decide

SERVICE = """
    app: {provider: docker, docker: {container: web}}
    health: {url: "http://127.0.0.1:1/h"}
"""


@pytest.mark.parametrize("matchers,labels,expected", [
    (['alertname="HighErrorRate"'], {"alertname": "HighErrorRate"}, True),
    (['alertname="HighErrorRate"'], {"alertname": "HighErrorRateX"}, False),
    (['severity=~"critical|page"'], {"severity": "page"}, True),
    (['severity=~"crit"'], {"severity": "critical"}, False),  # anchored, like Alertmanager
    (['severity=~"crit.*"'], {"severity": "critical"}, True),
    (['severity!~"info|none"'], {"severity": "warning"}, True),
    (['env!="dev"'], {}, True),
    (['team=""'], {"service": "web"}, True),  # a missing label is the empty string
    (['team=~".+"'], {}, False),
    (["severity=critical"], {"severity": "critical"}, True),  # the unquoted form
    (['{service="web", env=~"prod|staging"}'], {"service": "web", "env": "staging"}, True),
    (['{service="web", env=~"prod|staging"}'], {"service": "web", "env": "dev"}, False),
    (['summary="a, \\"b\\""'], {"summary": 'a, "b"'}, True),
    ([], {"anything": "x"}, True),
])
def test_matchers_follow_alertmanager(matchers, labels, expected):
    assert all_match(matchers, labels) is expected


@pytest.mark.parametrize("text,problem", [
    ('severity=~"(crit"', "invalid regular expression"),
    ("severity", "expected one of"),
    ('="x"', "label name first"),
    ('a="b', "not closed"),
    ('a="b"c', "after the closing quote"),
    ('a="\\q"', "unknown escape"),
    ('{a="b"', "closing one"),
])
def test_bad_matchers_say_why(text, problem):
    with pytest.raises(MatcherError, match=problem):
        parse_matchers(text)


def config(text: str) -> RollbackConfig:
    return RollbackConfig.model_validate(__import__("yaml").safe_load(text))


RULES = config(f"""
alerts:
  rules:
    - name: high-error-rate
      matchers: ['alertname="HighErrorRate"']
      severity: P1
      action: rollback
    - matchers: ['severity=~"critical|page"']
      severity: P0
      action: incident
    - matchers: ['severity="warning"']
      action: watch
services:
  web:
{SERVICE}
    alerts:
      rules:
        - name: web-is-noisy
          matchers: ['alertname="HighErrorRate"', 'env="canary"']
          action: notify
  api:
{SERVICE}
""")


def judged(service: str, **labels: str):
    alert = Alert(source="alertmanager", status="firing", fingerprint="f", labels=labels)
    return decide(alert, HealthCheck(url="http://127.0.0.1/h"), RULES.alert_rules(service))


def test_service_rules_first_then_top_level_first_match_wins():
    assert judged("web", alertname="HighErrorRate", env="canary").rule == "web-is-noisy"
    assert judged("web", alertname="HighErrorRate", env="canary").action == "notify"
    assert judged("api", alertname="HighErrorRate", env="canary").rule == "high-error-rate"
    first = judged("api", alertname="HighErrorRate", severity="critical")  # matches two rules: the first wins
    assert (first.action, first.severity) == ("rollback", "P1")
    incident = judged("api", alertname="Down", severity="page")
    assert incident.action == "incident" and incident.severity == "P0"
    assert incident.rule == 'alerts.rules[1] {severity=~"critical|page"}'  # unnamed: where it is, what it matches
    watch = judged("api", alertname="Slow", severity="warning")
    assert (watch.action, watch.severity) == ("watch", "P2")  # no severity in the rule: the source's, mapped


def test_no_rule_matching_falls_back_to_the_matrix_and_resolved_never_acts():
    assert judged("api", alertname="Other", severity="info").rule == "P3: fix forward, notify only"
    resolved = Alert(source="x", status="resolved", fingerprint="f", labels={"alertname": "HighErrorRate"})
    assert decide(resolved, HealthCheck(url="http://x"), RULES.alert_rules("api")).action == "resolve"


def test_invalid_rule_names_file_service_and_rule(tmp_path):
    path = tmp_path / "rollback.yaml"
    path.write_text(f"""
services:
  web:
{SERVICE}
    alerts:
      rules:
        - matchers: ['alertname="ok"']
          action: watch
        - name: broken
          matchers: ['severity=~"(critical"']
          action: rollback
""")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert str(path) in message and "services.web.alerts.rules.1" in message and "rule broken" in message
    assert "invalid regular expression" in message and "Value error" not in message
    path.write_text("alerts:\n  rules:\n    - {matchers: ['a=\"b\"'], action: reboot}\n")
    with pytest.raises(ConfigError, match=r"alerts.rules.0.action"):
        load_config(path)
    path.write_text("alerts:\n  rules:\n    - {matchers: ['a=\"b\"'], action: watch, severty: P1}\n")
    with pytest.raises(ConfigError, match=r"alerts.rules.0.severty: unknown field"):
        load_config(path)


@pytest.mark.parametrize("source,name,action,rule", [
    ("alertmanager", "alertmanager_firing.json", "rollback", "error rate 23.0% above the rollback threshold 5.0%"),
    ("grafana", "grafana_firing.json", "rollback", "error rate 23.0% above the rollback threshold 5.0%"),
    ("sentry", "sentry_metric_alert.json", "watch", "P1 without a value over a rollback threshold"),
    ("sentry", "sentry_issue_alert.json", "watch", "P1 without a value over a rollback threshold"),
    ("datadog", "datadog.json", "watch", "P1 without a value over a rollback threshold"),
    ("pagerduty", "pagerduty_triggered.json", "watch", "P1 without a value over a rollback threshold"),
])
def test_without_rules_the_per_source_defaults_and_the_matrix_decide(source, name, action, rule):
    from starter.alerts import parse
    from starter.routing import route_and_decide
    from tests.unit.test_alerts import golden

    settings = config(f"services:\n  shop:\n{SERVICE}")
    (alert,) = parse(source, golden(name), {}, settings.alerts, check_timestamps=False)
    verdict = route_and_decide(settings, alert)
    assert verdict.service == "shop" and verdict.decision.action == action and rule in verdict.decision.rule


def test_incident_severities_turn_rollback_decisions_into_incidents():
    """Runbook 001 end to end for the worst alerts: with `alerts.incident_severities`, a rollback
    decision at those severities declares an incident (and says why); others are left alone."""
    from starter.alerts import parse
    from starter.routing import route_and_decide
    from tests.unit.test_alerts import golden

    settings = config(f"alerts:\n  incident_severities: [P0, P1]\nservices:\n  shop:\n{SERVICE}")
    (critical,) = parse("alertmanager", golden("alertmanager_firing.json"), {}, settings.alerts, check_timestamps=False)
    verdict = route_and_decide(settings, critical)
    assert verdict.decision.action == "incident" and verdict.decision.severity in ("P0", "P1")
    assert "declares an incident (alerts.incident_severities)" in verdict.decision.rule
    (pager,) = parse("pagerduty", golden("pagerduty_triggered.json"), {}, settings.alerts, check_timestamps=False)
    assert route_and_decide(settings, pager).decision.action == "watch"  # not a rollback decision: unchanged

    plain = config(f"services:\n  shop:\n{SERVICE}")
    assert route_and_decide(plain, critical).decision.action == "rollback"  # the default: roll back at once
