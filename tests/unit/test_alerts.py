"""Alert sources with golden payloads, their authentication, and the decision matrix."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from starter.alerts import Refused, authenticate, parse
from workflows.config import HealthCheck, RollbackConfig, WebhookSource
from workflows.models import Alert
from workflows.policy import classify_severity, decide

PAYLOADS = Path(__file__).resolve().parent.parent / "payloads"


def golden(name: str) -> bytes:
    text = (PAYLOADS / name).read_text()
    return text.replace("OCCURRED_AT", datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")).encode()


def sign(secret: str, raw: bytes) -> str:
    return hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def test_alertmanager_grouped_alerts_are_each_an_alert():
    alerts, delivery = parse("alertmanager", golden("alertmanager_grouped_firing.json"), {})
    assert [a.fingerprint for a in alerts] == ["c3a1e9b6b5d5a1f0", "d4b2f0c7c6e6b2a1"]
    assert all(a.status == "firing" and a.labels["service"] == "shop" for a in alerts)
    assert alerts[0].values == {"error_rate": 0.27} and alerts[0].links
    resolved, resolved_delivery = parse("alertmanager", golden("alertmanager_resolved.json"), {})
    assert {a.status for a in resolved} == {"resolved"} and resolved_delivery != delivery


def test_grafana_values_and_links():
    (alert,), _ = parse("grafana", golden("grafana_firing.json"), {})
    assert alert.values["error_rate"] == 0.27 and any("dashboardURL" not in link for link in alert.links)


def test_sentry_issue_alert_tags_and_request_id():
    (alert,), delivery = parse("sentry", golden("sentry_issue_alert.json"), {"request-id": "req-1"})
    assert alert.labels["service"] == "shop" and alert.fingerprint == "issue:1170820242"
    assert classify_severity(alert) == "P1" and delivery == "req-1"


def test_datadog_template():
    (alert,), _ = parse("datadog", golden("datadog.json"), {})
    assert alert.labels == {"service": "shop", "env": "prod"} and alert.values["error_rate"] == 0.27
    recovered = json.loads(golden("datadog.json"))
    recovered["transition"] = "Recovered"
    (again,), _ = parse("datadog", json.dumps(recovered).encode(), {})
    assert again.status == "resolved"


def test_pagerduty_incident_and_stale_event():
    (alert,), delivery = parse("pagerduty", golden("pagerduty_triggered.json"), {})
    assert alert.labels["service"] == "shop" and classify_severity(alert) == "P0"
    assert delivery == "01DEN2HXHMQW4QDE8DFBYVW1KX"
    stale = (PAYLOADS / "pagerduty_triggered.json").read_text().replace("OCCURRED_AT", "2026-01-01T00:00:00Z")
    with pytest.raises(Refused) as refused:
        parse("pagerduty", stale.encode(), {})
    assert refused.value.status == 401 and refused.value.reason == "stale"


def test_malformed_payloads_are_400():
    for raw in (b"{nope", b"[1, 2]", b'{"alerts": 5}'):
        with pytest.raises(Refused) as refused:
            parse("alertmanager", raw, {})
        assert refused.value.status == 400


def test_hmac_sources_accept_any_rotated_secret_and_refuse_forgeries(monkeypatch):
    monkeypatch.setenv("SENTRY_SECRETS", "old-secret,new-secret")
    raw = golden("sentry_issue_alert.json")
    config = WebhookSource(secret_env="SENTRY_SECRETS")
    authenticate("sentry", config, {"sentry-hook-signature": sign("new-secret", raw)}, raw)
    for forged in (sign("other", raw), sign("new-secret", raw + b" "), ""):
        with pytest.raises(Refused):
            authenticate("sentry", config, {"sentry-hook-signature": forged}, raw)
    monkeypatch.setenv("PD_SECRETS", "pd-1,pd-2")
    pd = WebhookSource(secret_env="PD_SECRETS")
    authenticate("pagerduty", pd, {"x-pagerduty-signature": f"v1={sign('zzz', raw)},v1={sign('pd-2', raw)}"}, raw)
    with pytest.raises(Refused):
        authenticate("pagerduty", pd, {"x-pagerduty-signature": f"v1={sign('zzz', raw)}"}, raw)


def test_bearer_basic_shared_header_and_fail_closed(monkeypatch):
    monkeypatch.setenv("AM_TOKENS", "t1")
    monkeypatch.setenv("AM_BASIC", "alertmanager:pw")
    config = WebhookSource(bearer_env="AM_TOKENS", basic_env="AM_BASIC")
    authenticate("alertmanager", config, {"authorization": "Bearer t1"}, b"")
    basic = base64.b64encode(b"alertmanager:pw").decode()
    authenticate("alertmanager", config, {"authorization": f"Basic {basic}"}, b"")
    with pytest.raises(Refused):
        authenticate("alertmanager", config, {"authorization": "Bearer t2"}, b"")
    monkeypatch.setenv("DD_SECRET", "dd")
    authenticate("datadog", WebhookSource(secret_env="DD_SECRET", header="X-Hook"), {"x-hook": "dd"}, b"")
    with pytest.raises(Refused) as unconfigured:
        authenticate("grafana", None, {"authorization": "Bearer t1"}, b"")
    assert unconfigured.value.reason == "not_configured"
    monkeypatch.setenv("AM_TOKENS", "")
    with pytest.raises(Refused):
        authenticate("alertmanager", WebhookSource(bearer_env="AM_TOKENS"), {"authorization": "Bearer "}, b"")


@pytest.mark.parametrize("alert,action,rule", [
    (Alert(source="x", status="resolved", fingerprint="f", severity="P0"), "resolve", "resolved alerts never"),
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


def test_service_mapping_by_label_matchers():
    config = RollbackConfig.model_validate({"services": {
        "shop": {"app": {"provider": "docker", "docker": {"container": "s"}}, "health": {"url": "http://x"}},
        "api": {"alert_match": {"app": "api", "env": "prod"},
                "app": {"provider": "docker", "docker": {"container": "a"}}, "health": {"url": "http://x"}}}})
    assert config.service_for({"service": "shop"}) == "shop"
    assert config.service_for({"app": "api", "env": "prod"}) == "api"
    assert config.service_for({"app": "api", "env": "staging"}) is None
