"""Alert sources: how each one authenticates, and its payload turned into `Alert`s.

Pure functions over (headers, raw body): no I/O, so every source is unit-tested with the
golden payloads from its documentation. Payload facts: `reference/external-apis.md`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from datetime import datetime
from typing import Any, Callable

from workflows.config import WebhookSource
from workflows.models import Alert

STALE_SECONDS = 300


class Refused(Exception):
    """A delivery we will not act on: HTTP status, a metric label, and what to tell the sender."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status, self.reason = status, reason


def configured_secrets(env_name: str | None) -> list[str]:
    """All values of a secret variable; several, comma-separated, while a secret is rotated."""
    return [v.strip() for v in os.environ.get(env_name or "", "").split(",") if v.strip()]


def _any_equal(offered: str, accepted: list[str]) -> bool:
    # compare against every accepted value, so timing does not reveal which one matched
    matches = [hmac.compare_digest(offered.encode(), value.encode()) for value in accepted]
    return any(matches)


def _hmac_hex(secret: str, raw: bytes) -> str:
    return hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def authenticate(source: str, config: WebhookSource | None, headers: dict[str, str], raw: bytes) -> None:
    """Raise Refused(401) unless the request proves it comes from `source`. No secret: refuse all."""
    if config is None:
        raise Refused(401, "not_configured", f"no credentials configured for {source}: refusing (fail closed)")
    if source == "sentry":
        keys = configured_secrets(config.secret_env)
        offered = headers.get("sentry-hook-signature", "")
        if keys and offered and _any_equal(offered, [_hmac_hex(k, raw) for k in keys]):
            return
        raise Refused(401, "bad_signature", "Sentry-Hook-Signature does not match")
    if source == "pagerduty":
        keys = configured_secrets(config.secret_env)
        offered = [part.strip().removeprefix("v1=") for part in headers.get("x-pagerduty-signature", "").split(",")
                   if part.strip().startswith("v1=")]
        expected = [_hmac_hex(k, raw) for k in keys]
        if expected and any(_any_equal(value, expected) for value in offered):
            return
        raise Refused(401, "bad_signature", "X-PagerDuty-Signature does not match")
    if source == "datadog":
        keys = configured_secrets(config.secret_env)
        offered = headers.get(config.header.lower(), "")
        if keys and offered and _any_equal(offered, keys):
            return
        raise Refused(401, "bad_secret", f"{config.header} missing or wrong")
    # Alertmanager, Grafana and the generic endpoint: bearer or basic from the sender's http_config
    authorization = headers.get("authorization", "")
    bearer, basic = configured_secrets(config.bearer_env), configured_secrets(config.basic_env)
    if authorization.startswith("Bearer ") and bearer and _any_equal(authorization[7:], bearer):
        return
    if authorization.startswith("Basic ") and basic:
        try:
            decoded = base64.b64decode(authorization[6:], validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            decoded = ""
        if decoded and _any_equal(decoded, basic):
            return
    raise Refused(401, "unauthenticated", "missing or wrong Authorization")


def _number(value: Any) -> float | None:
    try:
        return float(str(value).strip().rstrip("%")) / (100 if str(value).strip().endswith("%") else 1)
    except (TypeError, ValueError):
        return None


VALUE_KEYS = ("error_rate", "p95_latency_ms")


def _values(*sources: dict) -> dict[str, float]:
    found: dict[str, float] = {}
    for source in sources:
        for key in VALUE_KEYS:
            number = _number((source or {}).get(key))
            if number is not None:
                found[key] = number
    return found


def _prometheus_style(source: str, body: dict) -> tuple[list[Alert], str]:
    """Alertmanager v4 and Grafana webhook contact points (same envelope)."""
    alerts = []
    common = body.get("commonLabels") or {}
    for item in body["alerts"]:
        labels = {**common, **(item.get("labels") or {})}
        annotations = item.get("annotations") or {}
        links = [url for url in (item.get("generatorURL"), item.get("dashboardURL"), item.get("panelURL")) if url]
        alerts.append(Alert(
            source=source, status=item.get("status") or body.get("status", "firing"),
            fingerprint=item.get("fingerprint") or json.dumps(labels, sort_keys=True),
            severity=labels.get("severity"), summary=annotations.get("summary") or labels.get("alertname", ""),
            labels={k: str(v) for k, v in labels.items()},
            values=_values(annotations, labels, item.get("values") or {}), links=links,
        ))
    fingerprints = ",".join(sorted(a.fingerprint for a in alerts))
    return alerts, f"{body.get('groupKey', '')}|{fingerprints}|{body.get('status', '')}"


def parse_sentry(body: dict, headers: dict[str, str]) -> tuple[list[Alert], str]:
    resource = headers.get("sentry-hook-resource", "")
    action = body.get("action", "")
    data = body.get("data") or {}
    if resource == "metric_alert" or "metric_alert" in data:
        metric = data.get("metric_alert") or {}
        rule = (metric.get("alert_rule") or {})
        status = "resolved" if action == "resolved" else "firing"
        tags = {"severity": "critical" if action == "critical" else "warning"}
        if isinstance(rule.get("tags"), dict):
            tags.update({k: str(v) for k, v in rule["tags"].items()})
        alert = Alert(source="sentry", status=status, fingerprint=f"metric:{metric.get('id') or rule.get('id')}",
                      severity=tags["severity"], summary=data.get("description_title") or rule.get("name", ""),
                      labels=tags, links=[data["web_url"]] if data.get("web_url") else [])
    else:
        event = data.get("event") or {}
        raw_tags = event.get("tags") or []
        tags = {str(t[0]): str(t[1]) for t in raw_tags if isinstance(t, (list, tuple)) and len(t) == 2}
        tags.update({k: str(v) for k, v in raw_tags.items()} if isinstance(raw_tags, dict) else {})
        level = event.get("level")
        alert = Alert(source="sentry", status="firing", fingerprint=f"issue:{event.get('issue_id')}",
                      severity={"fatal": "critical", "error": "critical"}.get(level, level),
                      summary=event.get("title", ""), labels=tags,
                      links=[event["web_url"]] if event.get("web_url") else [])
    return [alert], headers.get("request-id", "")


DATADOG_FIRING = ("triggered", "re-triggered", "warn", "re-warn", "renotify", "no data", "re-no data")


def parse_datadog(body: dict, headers: dict[str, str]) -> tuple[list[Alert], str]:
    """Our recommended Datadog template adds alert_id, transition, priority and tags to the default."""
    transition = str(body.get("transition") or body.get("alert_transition") or "Triggered")
    tags = {}
    for tag in str(body.get("tags") or "").split(","):
        key, sep, value = tag.strip().partition(":")
        if sep:
            tags[key] = value
    if transition.lower() in ("warn", "re-warn"):
        tags.setdefault("severity", "warning")
    alert = Alert(source="datadog", status="resolved" if transition.lower() == "recovered" else "firing",
                  fingerprint=str(body.get("aggreg_key") or body.get("alert_id") or body.get("id")),
                  severity=str(body.get("priority") or "") or tags.get("severity"),
                  summary=str(body.get("title", "")), labels=tags, values=_values(body),
                  links=[body["link"]] if body.get("link") else [])
    return [alert], f"{body.get('id', '')}|{transition}"


def parse_pagerduty(body: dict, headers: dict[str, str]) -> tuple[list[Alert], str]:
    event = body["event"]
    occurred = event.get("occurred_at")
    if occurred and time.time() - datetime.fromisoformat(occurred.replace("Z", "+00:00")).timestamp() > STALE_SECONDS:
        raise Refused(401, "stale", "event older than 5 minutes (signed occurred_at)")
    data = event.get("data") or {}
    kind = event.get("event_type", "")
    labels = {"service": ((data.get("service") or {}).get("summary") or "")}
    priority = (data.get("priority") or {}).get("summary") if isinstance(data.get("priority"), dict) else None
    severity = priority or ("P1" if data.get("urgency") == "high" else "P2")
    alert = Alert(source="pagerduty", status="resolved" if kind == "incident.resolved" else "firing",
                  fingerprint=str(data.get("incident_key") or data.get("id")), severity=severity,
                  summary=str(data.get("title", "")), labels=labels,
                  links=[data["html_url"]] if data.get("html_url") else [])
    if kind not in ("incident.triggered", "incident.reopened", "incident.escalated", "incident.resolved"):
        alert.status = "info"  # acknowledged, annotated, …: recorded, never acted on
    return [alert], str(event.get("id", ""))


def parse_generic(body: dict, headers: dict[str, str]) -> tuple[list[Alert], str]:
    labels = {k: str(v) for k, v in (body.get("labels") or {}).items()}
    labels["service"] = str(body["service"])  # mapped through the services' matchers like any source
    alert = Alert(source="generic", status=body.get("status", "firing"), fingerprint=str(body.get("fingerprint", "")),
                  severity=body.get("severity"), summary=body.get("summary", ""), labels=labels, values=_values(body))
    return [alert], ""


def check_sentry_timestamp(headers: dict[str, str]) -> None:
    stamp = headers.get("sentry-hook-timestamp")
    if stamp and stamp.replace(".", "", 1).isdigit() and time.time() - float(stamp) > STALE_SECONDS:
        raise Refused(401, "stale", "Sentry-Hook-Timestamp older than 5 minutes")


PARSERS: dict[str, Callable[[dict, dict], tuple[list[Alert], str]]] = {
    "alertmanager": lambda body, headers: _prometheus_style("alertmanager", body),
    "grafana": lambda body, headers: _prometheus_style("grafana", body),
    "sentry": parse_sentry,
    "datadog": parse_datadog,
    "pagerduty": parse_pagerduty,
    "generic": parse_generic,
}


def parse(source: str, raw: bytes, headers: dict[str, str]) -> tuple[list[Alert], str]:
    """The alerts in a delivery and its replay key; Refused(400) when it is not what the source sends."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise Refused(400, "malformed", f"malformed JSON: {exc}") from None
    if not isinstance(body, dict):
        raise Refused(400, "malformed", "expected a JSON object")
    if source == "sentry":
        check_sentry_timestamp(headers)
    try:
        return PARSERS[source](body, headers)
    except Refused:
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise Refused(400, "malformed", f"not a {source} payload: missing or bad {exc}") from None
