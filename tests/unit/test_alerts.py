"""Alert sources with golden payloads written from each vendor's documented examples, their
authentication and signed timestamps, values, hostile JSON, and the decision matrix."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from starter.alerts import Refused, authenticate, check_fresh, ended_occurrences, load_json, parse
from workflows.config import AlertsConfig, HealthCheck, RollbackConfig, WebhookSource
from workflows.models import Alert
from workflows.policy import classify_severity, decide

PAYLOADS = Path(__file__).resolve().parent.parent / "payloads"
SENTRY_METRIC = {"sentry-hook-resource": "metric_alert"}  # parsed without the signed-time check


def golden(name: str, occurred_at: datetime | None = None) -> bytes:
    at = occurred_at or datetime.now(timezone.utc)
    text = (PAYLOADS / name).read_text()
    return text.replace("OCCURRED_AT", at.strftime("%Y-%m-%dT%H:%M:%SZ")).encode()


def sign(secret: str, raw: bytes) -> str:
    return hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def only(alerts: list[Alert]) -> Alert:
    assert len(alerts) == 1, alerts
    return alerts[0]


# ---------------------------------------------------------------------------------------------
# Labels and values from where each vendor puts them


def test_alertmanager_labels_annotation_value_and_occurrence():
    alert = only(parse("alertmanager", golden("alertmanager_firing.json"), {}))
    assert alert.labels["alertname"] == "HighErrorRate" and alert.labels["service"] == "shop"
    assert alert.labels["severity"] == "critical" and alert.labels["job"] == "shop"
    assert alert.values == {"error_rate": 0.23} and alert.notes == []
    # the key changes with startsAt (a new occurrence), not with a repeat of the same group
    assert alert.occurrence == "1a30ba71cca2921f|2026-11-25T10:00:00.000Z"


def test_alertmanager_grouped_alerts_are_each_an_alert():
    alerts = parse("alertmanager", golden("alertmanager_grouped_firing.json"), {})
    assert [a.fingerprint for a in alerts] == ["c3a1e9b6b5d5a1f0", "d4b2f0c7c6e6b2a1"]
    assert [a.values["error_rate"] for a in alerts] == [0.27, 0.31] and alerts[0].links
    resolved = parse("alertmanager", golden("alertmanager_resolved.json"), {})
    assert {a.status for a in resolved} == {"resolved"}
    assert [a.occurrence for a in resolved] == [a.occurrence for a in alerts]  # same occurrence, other status


def test_grafana_values_map_and_value_string():
    alert = only(parse("grafana", golden("grafana_firing.json"), {}))
    assert alert.values == {"error_rate": 0.23} and alert.labels["grafana_folder"] == "Shop"
    # the rule, the dashboard and the panel, where Grafana puts them (silenceURL is not evidence)
    assert alert.links == ["http://127.0.0.1:3000/alerting/grafana/eds8ub2d0fnr4b/view?orgId=1",
                           "http://127.0.0.1:3000/d/shop-red?orgId=1",
                           "http://127.0.0.1:3000/d/shop-red?orgId=1&viewPanel=2"]
    body = json.loads(golden("grafana_firing.json"))
    del body["alerts"][0]["values"]  # older Grafana: only valueString
    alert = only(parse("grafana", json.dumps(body).encode(), {}))
    assert alert.values == {"error_rate": 0.23}
    body["alerts"][0]["valueString"] = "[ var='A' labels={} value=0.4 ], [ var='C' labels={} value=1 ]"
    alert = only(parse("grafana", json.dumps(body).encode(), {}))
    assert alert.values == {} and "none is 'B'" in alert.notes[0]
    alert = only(parse("grafana", json.dumps(body).encode(), {}, AlertsConfig(grafana_value_ref="A")))
    assert alert.values == {"error_rate": 0.4}


def test_sentry_metric_alert_service_from_the_rules_projects():
    alert = only(parse("sentry", golden("sentry_metric_alert.json"), SENTRY_METRIC, check_timestamps=False))
    # the rule's environment is a label, as an issue alert's event tags make it one
    assert alert.labels == {"alertname": "Checkout errors", "service": "shop", "severity": "critical",
                            "environment": "production"}
    assert alert.status == "firing" and classify_severity(alert) == "P1"
    body = json.loads(golden("sentry_metric_alert.json"))
    body["action"] = "warning"
    assert classify_severity(only(parse("sentry", json.dumps(body).encode(), SENTRY_METRIC, check_timestamps=False))) == "P2"
    body["action"] = "resolved"
    assert only(parse("sentry", json.dumps(body).encode(), SENTRY_METRIC, check_timestamps=False)).status == "resolved"
    body["data"]["metric_alert"]["alert_rule"]["projects"] = ["shop", "api"]
    assert [a.labels["service"] for a in parse("sentry", json.dumps(body).encode(), SENTRY_METRIC, check_timestamps=False)] == ["shop", "api"]


def test_sentry_issue_alert_project_slug_rule_name_and_level():
    alert = only(parse("sentry", golden("sentry_issue_alert.json"), {"request-id": "req-1"}, check_timestamps=False))
    # the documented event has a numeric project id; the slug is in the event's API URL
    assert alert.labels["service"] == "shop" and alert.labels["alertname"] == "Checkout crashes"
    assert alert.labels["severity"] == "error" and alert.labels["environment"] == "production"
    assert alert.fingerprint == "issue:1117540176" and alert.occurrence == "req-1"
    assert classify_severity(alert) == "P1"


def test_datadog_tags_priority_metric_and_title():
    alert = only(parse("datadog", golden("datadog.json"), {}))
    assert alert.labels == {"env": "prod", "service": "shop", "team": "payments", "alertname": "Checkout 5xx rate",
                            "metric": "trace.http.request.errors", "severity": "P1", "priority": "P1"}
    # keyed by the alert cycle: a renotification of it (new event id) is the same occurrence
    assert classify_severity(alert) == "P1" and alert.occurrence == "7382940012345678000|Triggered"
    recovered = json.loads(golden("datadog.json"))
    recovered["alert_transition"] = "Recovered"
    assert only(parse("datadog", json.dumps(recovered).encode(), {})).status == "resolved"
    tagged = {**json.loads(golden("datadog.json")), "tags": "service:shop,severity:low"}
    alert = only(parse("datadog", json.dumps(tagged).encode(), {}))  # the alert's own label is kept, and decides
    assert alert.labels["severity"] == alert.severity == "low" and classify_severity(alert) == "P3"
    old_template = {"id": "1", "title": "[Warn] x", "transition": "Warn", "tags": "service:shop", "error_rate": "3%"}
    alert = only(parse("datadog", json.dumps(old_template).encode(), {}))
    assert alert.labels["severity"] == "warning" and alert.values == {"error_rate": 0.03}


def datadog(**fields) -> Alert:
    return only(parse("datadog", json.dumps(fields).encode(), {}))


def test_datadog_transition_from_the_default_payloads_title_its_alert_type_or_a_nested_template():
    """Datadog's default payload has no transition field: its title says `[Recovered on …]`. A
    recovery must never read as a new alert (it would start a rollback)."""
    recovered = only(parse("datadog", golden("datadog_default_recovered.json"), {}))
    assert (recovered.status, recovered.labels["service"], recovered.labels["alertname"]) == \
        ("resolved", "shop", "Checkout 5xx rate")
    assert recovered.occurrence == "7382940012345678999|Recovered"
    assert datadog(id="2", title="[P2] [Re-Triggered on {service:shop}] 5xx", tags="service:shop").status == "firing"
    assert datadog(id="3", title="[No Data on {service:shop}] 5xx", tags="service:shop").status == "firing"
    assert datadog(id="4", title="[Recovered] 5xx", alert_type="success", tags="service:shop").status == "resolved"
    assert datadog(id="5", title="5xx", alert_type="success", tags="service:shop").status == "resolved"
    nested = datadog(id="6", title="5xx", tags="service:shop", alert={"transition": "Recovered", "priority": "normal"})
    assert nested.status == "resolved" and nested.labels["severity"] == ""
    # a warning threshold is a warning (P2: notify only) whatever the monitor's priority; the
    # priority stays a label a rule can match
    warn = datadog(id="7", title="[Warn on {service:shop}] 5xx", alert_priority="P1", tags="service:shop")
    assert (warn.status, classify_severity(warn), warn.labels["priority"]) == ("firing", "P2", "P1")


def test_datadog_event_priority_is_not_the_monitors_and_the_scope_names_the_service():
    # $PRIORITY (normal/low) is the event's priority, not the monitor's P1-P5
    assert classify_severity(datadog(id="1", title="5xx", transition="Triggered", priority="low",
                                     tags="service:shop")) == "P1"
    assert classify_severity(datadog(id="1", title="5xx", priority="P3", tags="service:shop")) == "P3"
    # a monitor tagged with its owner's service, grouped by service: the group that fired decides
    alert = datadog(id="9", alert_transition="Triggered", alert_scope="service:shop",
                    tags="env:prod,monitor,service:checkout,service:shop")
    assert alert.labels["service"] == "shop"


def test_datadog_renotification_is_a_repeat_and_a_recovery_ends_the_cycle():
    cycle = {"alert_cycle_key": "c1", "title": "[Triggered on {service:shop}] 5xx", "tags": "service:shop"}
    first = datadog(id="e1", alert_transition="Triggered", **cycle)
    renotified = datadog(id="e2", alert_transition="Re-Triggered", **cycle)
    assert first.occurrence == renotified.occurrence == "c1|Triggered"
    # a template with $ALERT_ID in `id` (no cycle key): the recovery ends whatever fired before it,
    # so the monitor's next trigger is new, not a replay of the last one
    recovered = datadog(id="1234", alert_transition="Recovered", tags="service:shop")
    assert {"1234|Triggered", "1234|Warn"} <= set(ended_occurrences(recovered))
    assert datadog(id="1234", alert_transition="Triggered", tags="service:shop").occurrence in \
        ended_occurrences(recovered)


def test_grafana_legacy_dashboard_alert():
    """Grafana up to 10's legacy alerting posts one rule's state, not an Alertmanager envelope."""
    alert = only(parse("grafana", golden("grafana_legacy_alerting.json"), {}))
    assert (alert.status, alert.labels["service"], alert.labels["alertname"], classify_severity(alert)) == \
        ("firing", "shop", "HighErrorRate", "P1")
    assert alert.values == {"error_rate": 0.23} and alert.links[0].startswith("http://localhost:3000/d/")
    body = json.loads(golden("grafana_legacy_alerting.json"))
    assert only(parse("grafana", json.dumps({**body, "state": "ok", "evalMatches": []}).encode(), {})).status == \
        "resolved"
    assert only(parse("grafana", json.dumps({**body, "state": "pending"}).encode(), {})).status == "info"


def test_prometheus_humanized_and_grafana_classic_condition_values():
    body = json.loads(golden("alertmanager_firing.json"))
    body["alerts"][0]["annotations"]["value"] = "230m"  # {{ $value | humanize }} of 0.23
    assert only(parse("alertmanager", json.dumps(body).encode(), {})).values == {"error_rate": 0.23}
    body["alerts"][0]["annotations"]["value"] = "5 minutes"
    alert = only(parse("alertmanager", json.dumps(body).encode(), {}))
    assert alert.values == {} and "not a number" in alert.notes[0]
    grafana = json.loads(golden("grafana_firing.json"))
    grafana["alerts"][0].pop("values", None)
    grafana["alerts"][0]["valueString"] = "[ var='B0' metric='shop' labels={service=shop} value=0.31 ]"
    assert only(parse("grafana", json.dumps(grafana).encode(), {})).values == {"error_rate": 0.31}


def test_pagerduty_v2_webhook_is_a_clear_400():
    v2 = {"messages": [{"event": "incident.trigger", "incident": {"id": "PT4KHLK", "title": "x"}}]}
    with pytest.raises(Refused) as refused:
        parse("pagerduty", json.dumps(v2).encode(), {})
    assert refused.value.status == 400 and "v3 webhook" in str(refused.value)


def test_pagerduty_service_priority_and_title():
    alert = only(parse("pagerduty", golden("pagerduty_triggered.json"), {}))
    assert alert.labels["service"] == "shop" and alert.labels["severity"] == "P1"
    assert alert.labels["alertname"] == "Checkout failing: 5xx above 5 %" and alert.labels["urgency"] == "high"
    assert alert.occurrence == "5ac64822-4adc-4fda-ade0-410becf0de4f"
    body = json.loads(golden("pagerduty_triggered.json"))
    del body["event"]["data"]["priority"]
    assert only(parse("pagerduty", json.dumps(body).encode(), {})).labels["severity"] == "high"
    body["event"]["event_type"] = "incident.acknowledged"
    body["event"]["agent"] = {"id": "PTUXL6G", "summary": "Jane Doe", "type": "user_reference"}
    acknowledged = only(parse("pagerduty", json.dumps(body).encode(), {}))
    assert acknowledged.status == "acknowledged" and acknowledged.acknowledged_by == "Jane Doe"
    body["event"]["event_type"] = "incident.annotated"
    assert only(parse("pagerduty", json.dumps(body).encode(), {})).status == "info"


@pytest.mark.parametrize("raw,expected,note", [
    ('"0.23"', 0.23, None),
    ('"23%"', 0.23, None),
    ("0.5", 0.5, None),
    ("NaN", None, "not a finite number"),
    ("Infinity", None, "not a finite number"),
    ("-Infinity", None, "not a finite number"),
    ("1e999", None, "not a finite number"),
    ('"NaN"', None, "not a finite number"),
    ('"high"', None, "is not a number"),
    ("true", None, "is not a number"),
    ('{"a": 1}', None, "is not a number"),
])
def test_values_must_be_finite_numbers(raw, expected, note):
    body = json.loads(golden("alertmanager_firing.json"))
    text = json.dumps(body).replace('"value": "0.23"', f'"value": {raw}', 1)
    alert = parse("alertmanager", text.encode(), {})[0]
    assert alert.values.get("error_rate") == expected
    assert (note is None and alert.notes == []) or (note in alert.notes[0] and "treated as absent" in alert.notes[0])
    decision = decide(alert, HealthCheck(url="http://127.0.0.1/h"))
    assert note is None or note in decision.note  # the answer says why the value was ignored


def test_value_unit_and_annotation_are_configurable():
    text = golden("alertmanager_firing.json").replace(b'"value": "0.23"', b'"ratio_pct": "23"')
    assert parse("alertmanager", text, {})[0].values == {}
    options = AlertsConfig(value_annotation="ratio_pct", value_unit="percent")
    assert parse("alertmanager", text, {}, options)[0].values == {"error_rate": 0.23}


# ---------------------------------------------------------------------------------------------
# Hostile JSON


def test_deep_nesting_surrogates_and_non_objects_are_400_or_cleaned():
    for raw in (b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000):
        with pytest.raises(Refused) as refused:
            load_json(raw)
        assert refused.value.status == 400 and refused.value.reason == "too_deep"
    for raw in (b"{nope", b"[1, 2]", b"\xff\xfe{}", b'"\\ud800"'):
        with pytest.raises(Refused) as refused:
            load_json(raw)
        assert refused.value.status == 400
    body = load_json(b'{"k\\udc00": ["\\ud800", {"x": "a\\ud83d\\ude00b\\udfff"}]}')
    assert body == {"k\ufffd": ["\ufffd", {"x": "a\U0001F600b\ufffd"}]}
    json.dumps(body, ensure_ascii=False).encode()  # encodable as UTF-8 now
    text = golden("alertmanager_firing.json").replace(b'"HighErrorRate"', b'"High\\ud800Rate"')
    assert parse("alertmanager", text, {})[0].labels["alertname"] == "High\ufffdRate"


def test_malformed_payloads_are_400():
    for raw in (b'{"alerts": 5}', b'{"alerts": [1, "x"], "commonLabels": []}', b"{}"):
        try:
            alerts = parse("alertmanager", raw, {})
        except Refused as refused:
            assert refused.status == 400
        else:
            assert all(a.labels["alertname"] == "" for a in alerts)
    for source in ("pagerduty", "generic"):
        with pytest.raises(Refused) as refused:
            parse(source, b'{"event": [], "service": {}}', {}, check_timestamps=False)
        assert refused.value.status == 400


# ---------------------------------------------------------------------------------------------
# Authentication and signed timestamps


def test_signed_timestamps_within_five_minutes_either_way():
    now = time.time()
    check_fresh("sentry", {"sentry-hook-timestamp": str(int(now) - 60)}, {}, now)
    for stamp, reason in ((None, "missing_timestamp"), (str(int(now) - 400), "stale"),
                          (str(int(now) + 400), "future"), ("soon", "bad_timestamp")):
        with pytest.raises(Refused) as refused:
            check_fresh("sentry", {} if stamp is None else {"sentry-hook-timestamp": stamp}, {}, now)
        assert (refused.value.status, refused.value.reason) == (401, reason)
    # PagerDuty retries a 5xx-answered delivery for ~20 minutes with its original occurred_at
    # (a 4xx drops it for good): an hour old is still taken, the event id catches a replay
    assert only(parse("pagerduty", golden("pagerduty_triggered.json", datetime.now(timezone.utc)
                                          - timedelta(minutes=25)), {})).status == "firing"
    for offset, reason in ((-3700, "stale"), (400, "future")):
        raw = golden("pagerduty_triggered.json", datetime.now(timezone.utc) + timedelta(seconds=offset))
        with pytest.raises(Refused) as refused:
            parse("pagerduty", raw, {})
        assert refused.value.reason == reason
    without = json.loads(golden("pagerduty_triggered.json"))
    del without["event"]["occurred_at"]
    with pytest.raises(Refused) as refused:
        parse("pagerduty", json.dumps(without).encode(), {})
    assert refused.value.reason == "missing_timestamp"
    # a saved payload (`rollback alerts test`) is decided whatever its timestamp says
    assert parse("pagerduty", json.dumps(without).encode(), {}, check_timestamps=False)


def test_hmac_sources_accept_any_rotated_secret_and_refuse_forgeries(monkeypatch):
    monkeypatch.setenv("SENTRY_SECRETS", "old-secret,mid-secret,new-secret")
    raw = golden("sentry_issue_alert.json")
    config = WebhookSource(secret_env="SENTRY_SECRETS")
    for secret in ("old-secret", "mid-secret", "new-secret"):  # any configured one, not only the last
        authenticate("sentry", config, {"sentry-hook-signature": sign(secret, raw)}, raw)
    for forged in (sign("other", raw), sign("new-secret", raw + b" "), ""):
        with pytest.raises(Refused):
            authenticate("sentry", config, {"sentry-hook-signature": forged}, raw)
    monkeypatch.setenv("PD_SECRETS", "pd-1,pd-2,pd-3")
    pd = WebhookSource(secret_env="PD_SECRETS")
    for secret in ("pd-1", "pd-2", "pd-3"):
        authenticate("pagerduty", pd, {"x-pagerduty-signature": f"v1={sign('zzz', raw)},v1={sign(secret, raw)}"}, raw)
    with pytest.raises(Refused):
        authenticate("pagerduty", pd, {"x-pagerduty-signature": f"v1={sign('zzz', raw)}"}, raw)


def test_bearer_basic_shared_header_and_fail_closed(monkeypatch):
    monkeypatch.setenv("AM_TOKENS", "t1,t2,t3")  # during a rotation: every listed token works
    monkeypatch.setenv("AM_BASIC", "alertmanager:pw")
    config = WebhookSource(bearer_env="AM_TOKENS", basic_env="AM_BASIC")
    for token in ("t1", "t2", "t3"):
        authenticate("alertmanager", config, {"authorization": f"Bearer {token}"}, b"")
    basic = base64.b64encode(b"alertmanager:pw").decode()
    authenticate("alertmanager", config, {"authorization": f"Basic {basic}"}, b"")
    with pytest.raises(Refused):
        authenticate("alertmanager", config, {"authorization": "Bearer t4"}, b"")
    monkeypatch.setenv("DD_SECRET", "dd")
    authenticate("datadog", WebhookSource(secret_env="DD_SECRET", header="X-Hook"), {"x-hook": "dd"}, b"")
    with pytest.raises(Refused) as unconfigured:
        authenticate("grafana", None, {"authorization": "Bearer t1"}, b"")
    assert unconfigured.value.reason == "not_configured"
    monkeypatch.setenv("AM_TOKENS", "")
    with pytest.raises(Refused):
        authenticate("alertmanager", WebhookSource(bearer_env="AM_TOKENS"), {"authorization": "Bearer "}, b"")


# ---------------------------------------------------------------------------------------------
# The runbooks' matrix (no rules configured)


@pytest.mark.parametrize("alert,action,rule", [
    (Alert(source="x", status="resolved", fingerprint="f", severity="P0"), "resolve", "resolved alerts never"),
    (Alert(source="x", status="info", fingerprint="f", severity="P0"), "notify", "never acted on"),
    (Alert(source="x", status="firing", fingerprint="f", labels={"category": "payments"}), "rollback", "P0"),
    (Alert(source="x", status="firing", fingerprint="f", values={"error_rate": 0.06}), "rollback", "error rate 6.0%"),
    (Alert(source="x", status="firing", fingerprint="f", values={"error_rate": 0.03}), "watch", "above warning"),
    (Alert(source="x", status="firing", fingerprint="f", values={"p95_latency_ms": 2500}), "rollback", "p95 latency"),
    (Alert(source="x", status="firing", fingerprint="f", severity="warning"), "notify", "P2: fix forward"),
    (Alert(source="x", status="firing", fingerprint="f", severity="info"), "notify", "P3: fix forward"),
    (Alert(source="x", status="firing", fingerprint="f", severity="critical"), "watch", "a person decides"),
])
def test_decision_matrix(alert, action, rule):
    decision = decide(alert, HealthCheck(url="http://127.0.0.1/h", rollback_p95_ms=2000))
    assert decision.action == action and rule in decision.rule


@pytest.mark.parametrize("word,level", [
    ("critical", "P1"), ("page", "P1"), ("fatal", "P1"), ("error", "P1"), ("high", "P1"), ("P1", "P1"),
    ("warning", "P2"), ("P2", "P2"), ("low", "P3"), ("P4", "P3"), ("P5", "P3"), ("info", "P3"),
    ("emergency", "P0"), ("P0", "P0"), ("", "P1"), ("whatever", "P1"),
])
def test_per_source_severity_defaults(word, level):
    assert classify_severity(Alert(source="x", status="firing", fingerprint="f", labels={"severity": word})) == level


def test_service_mapping_by_label_matchers():
    config = RollbackConfig.model_validate({"services": {
        "shop": {"app": {"provider": "docker", "docker": {"container": "s"}}, "health": {"url": "http://x"}},
        "api": {"alert_match": {"app": "api", "env": "prod"},
                "app": {"provider": "docker", "docker": {"container": "a"}}, "health": {"url": "http://x"}}}})
    assert config.service_for({"service": "shop"}) == "shop"
    assert config.service_for({"app": "api", "env": "prod"}) == "api"
    assert config.service_for({"app": "api", "env": "staging"}) is None
