"""Alerts as each tool really sends them (golden payloads written from the vendors' documented
examples) decide `rollback` or `incident` for the matching rule, through `rollback alerts test`
and through the live receiver over HTTP, which starts the workflow in Temporal."""

from __future__ import annotations

import json

import pytest

from tests.receiver import receiver, signed_headers, started  # noqa: F401 - receiver is a fixture
from tests.helpers import assert_eventually
from tests.test_cli import assert_one_line_error, cli
from tests.unit.test_alerts import PAYLOADS, golden

RULES = {"rules": [
    {"name": "high-error-rate", "matchers": ['alertname="HighErrorRate"'], "severity": "P1", "action": "rollback"},
    {"name": "checkout-crashes", "matchers": ['alertname="Checkout crashes"', 'severity=~"error|fatal"'],
     "action": "rollback"},
    {"name": "page-worthy", "matchers": ['severity=~"critical|page|P1|high"'], "severity": "P0", "action": "incident"},
    {"matchers": ['severity="warning"'], "action": "watch"},
]}

GOLDENS = [  # source, file, extra headers the sender adds, action, rule, severity
    ("alertmanager", "alertmanager_firing.json", {}, "rollback", "high-error-rate", "P1"),
    ("grafana", "grafana_firing.json", {}, "rollback", "high-error-rate", "P1"),
    ("sentry", "sentry_metric_alert.json", {"Sentry-Hook-Resource": "metric_alert"}, "incident", "page-worthy", "P0"),
    ("sentry", "sentry_issue_alert.json", {"Sentry-Hook-Resource": "event_alert"}, "rollback", "checkout-crashes",
     "P1"),
    ("datadog", "datadog.json", {}, "incident", "page-worthy", "P0"),
    ("pagerduty", "pagerduty_triggered.json", {}, "incident", "page-worthy", "P0"),
]


@pytest.mark.parametrize("source,name,extra,action,rule,severity", GOLDENS, ids=[g[1] for g in GOLDENS])
async def test_golden_payload_decides_the_same_in_the_cli_and_the_live_receiver(
        receiver, client, caplog, source, name, extra, action, rule, severity):
    hook = receiver(alerts=RULES)
    # `rollback alerts test` on the saved payload: no signature, nothing started
    proc = cli("alerts", "test", "--source", source, str(PAYLOADS / name), "--config", str(hook.config._path),
               "--json")
    assert proc.returncode == 0, proc.stderr
    (tested,) = json.loads(proc.stdout)
    assert {k: tested[k] for k in ("service", "severity", "action", "rule")} == {
        "service": hook.service, "severity": severity, "action": action, "rule": rule}
    assert {"alertname", "service", "severity"} <= set(tested["labels"])
    assert not await started(client, hook.service)

    # the same payload, signed, to the receiver over HTTP
    raw = golden(name)
    with caplog.at_level("INFO", logger="rollback.webhook"):
        async with hook.http() as http:
            answer = await http.post(f"/alerts/{source}", content=raw, headers=signed_headers(source, raw, **extra))
    assert answer.status_code == 202, answer.text
    assert f"action={action} severity={severity} rule={rule!r}" in caplog.text  # the log line names the rule
    (alert,) = answer.json()["alerts"]
    assert {k: alert[k] for k in ("service", "severity", "action", "rule", "labels")} == {
        k: tested[k] for k in ("service", "severity", "action", "rule", "labels")}
    expected = f"incident-{hook.service}" if action == "incident" else hook.workflow_id  # runbook 001 or an app rollback
    assert alert["started"] and alert["workflow_id"] == expected

    async def listed() -> bool:
        return (await client.count_workflows(f"WorkflowId = '{expected}'")).count == 1

    await assert_eventually(listed, message="Temporal lists the started workflow")
    handle = client.get_workflow_handle(expected)
    description = await handle.describe()
    assert description.status.name == "RUNNING"
    start = [e async for e in handle.fetch_history_events()][0].workflow_execution_started_event_attributes
    request = json.loads(start.input.payloads[0].data)
    assert request["trigger_rule"] == rule and request["severity"] == severity  # the timeline's `started` event
    await handle.terminate("test over")


def test_alerts_test_errors_are_one_line(tmp_path):
    config = tmp_path / "rollback.yaml"
    config.write_text("services: {}\n")
    assert_one_line_error(cli("alerts", "test", "--source", "nagios", str(PAYLOADS / "datadog.json"),
                              "--config", str(config)), 2, "--source")
    assert_one_line_error(cli("alerts", "test", str(PAYLOADS / "datadog.json")), 2, "--source")
    wrong = cli("alerts", "test", "--source", "pagerduty", str(PAYLOADS / "datadog.json"), "--config", str(config))
    assert_one_line_error(wrong, 1, "not a pagerduty payload")
    config.write_text("alerts:\n  rules:\n    - {name: typo, matchers: ['severity=~\"(crit\"'], action: rollback}\n")
    broken = cli("alerts", "test", "--source", "alertmanager", str(PAYLOADS / "alertmanager_firing.json"),
                 "--config", str(config))
    assert_one_line_error(broken, 1, f"{config}: alerts.rules.0: rule typo: invalid matcher")


def test_alerts_test_prints_why(tmp_path):
    config = tmp_path / "rollback.yaml"
    config.write_text("services: {}\n")
    proc = cli("alerts", "test", "--source", "alertmanager", str(PAYLOADS / "alertmanager_grouped_firing.json"),
               "--config", str(config))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("action:   ignore") == 2 and "no configured service matches" in proc.stdout
    assert 'labels:   alertname="HighErrorRate", instance="a", service="shop", severity="critical"' in proc.stdout
