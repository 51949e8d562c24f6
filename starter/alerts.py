"""Alert sources: how each one authenticates, and its payload turned into normalised `Alert`s.

Pure functions over (headers, raw body): no I/O, so every source is unit-tested with golden
payloads written from its vendor's documentation. Payload facts: `reference/external-apis.md`.

Every alert comes out with the labels `alertname`, `service` and `severity` (empty when the
source does not say) besides its own, so one rule in Alertmanager's matcher syntax works for
every source. A label the alert already carries is kept; the vendor's fields fill in the rest.
A value is a finite number or nothing: anything else is dropped and said so in `Alert.notes`.
Strings are cleaned of lone UTF-16 surrogates (valid JSON, but not encodable as UTF-8) before
anything else sees them: logs, answers, Temporal payloads.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
import re
import time
from datetime import datetime, timezone
from typing import Any, Callable

from workflows.config import AlertsConfig, WebhookSource
from workflows.models import Alert

STALE_SECONDS = 300  # signed timestamps further than this from now, either way, are refused
# PagerDuty retries a delivery we answered 5xx for about 20 minutes, with the event's original
# occurred_at (and holds the deliveries queued behind it): its events may be that old. A replay
# inside the window is still caught, by the event id the replay records keep for replay_ttl.
PAGERDUTY_STALE_SECONDS = 3600
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF][0-9a-fA-F]{2}")
_SURROGATES = re.compile("[\ud800-\udfff]")


class Refused(Exception):
    """A delivery we will not act on: HTTP status, a metric label, and what to tell the sender."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status, self.reason = status, reason


# ---------------------------------------------------------------------------------------------
# Authentication


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


def _epoch(stamp: Any) -> float | None:
    if isinstance(stamp, str):
        try:
            if stamp.replace(".", "", 1).isdigit():
                return float(stamp)
            moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            return None
        return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()
    return None


def _within_window(what: str, stamp: Any, now: float, oldest: float = STALE_SECONDS) -> None:
    if stamp is None or stamp == "":
        raise Refused(401, "missing_timestamp", f"{what} is missing: cannot tell a replay from a fresh event")
    moment = _epoch(stamp)
    if moment is None or not math.isfinite(moment):
        raise Refused(401, "bad_timestamp", f"{what} is not a timestamp")
    if now - moment > oldest:
        raise Refused(401, "stale", f"{what} is more than {oldest // 60:.0f} minutes old")
    if moment - now > STALE_SECONDS:
        raise Refused(401, "future", f"{what} is more than 5 minutes in the future")


def check_fresh(source: str, headers: dict[str, str], body: dict, now: float | None = None) -> None:
    """Signed timestamps must be within 5 minutes of now: an old signed body replayed later, or
    one stamped ahead to outlive the window, is refused. Part of authentication, so `rollback
    alerts test` (a saved payload) skips it."""
    now = time.time() if now is None else now
    if source == "sentry":
        _within_window("Sentry-Hook-Timestamp", headers.get("sentry-hook-timestamp"), now)
    elif source == "pagerduty":
        event = body.get("event")
        _within_window("event.occurred_at", event.get("occurred_at") if isinstance(event, dict) else None, now,
                       oldest=PAGERDUTY_STALE_SECONDS)


# ---------------------------------------------------------------------------------------------
# Reading JSON as hostile input


def _without_surrogates(document: Any) -> Any:
    """The same document with lone surrogates replaced by U+FFFD, walked without recursion."""
    def clean(value: Any) -> Any:
        return _SURROGATES.sub("\ufffd", value) if isinstance(value, str) else value

    root: list[Any] = [document]
    stack: list[tuple[Any, Any]] = [(root, 0)]
    while stack:
        parent, key = stack.pop()
        value = parent[key]
        if isinstance(value, dict):
            value = {clean(k): v for k, v in value.items()}
            parent[key] = value
            stack.extend((value, k) for k in value)
        elif isinstance(value, list):
            stack.extend((value, i) for i in range(len(value)))
        else:
            parent[key] = clean(value)
    return root[0]


def load_json(raw: bytes) -> dict:
    """The body as a JSON object, or Refused(400). JSON must be UTF-8 (RFC 8259)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(400, "malformed", "body is not UTF-8") from None
    try:
        body = json.loads(text)
    except RecursionError:
        raise Refused(400, "too_deep", "JSON nested too deeply") from None
    except ValueError as exc:
        raise Refused(400, "malformed", f"malformed JSON: {exc}") from None
    if not isinstance(body, dict):
        raise Refused(400, "malformed", "expected a JSON object")
    # surrogates only come from \uD800-\uDFFF escapes (the text decoded strictly)
    return _without_surrogates(body) if _SURROGATE_ESCAPE.search(text) else body


def _text(value: Any) -> str | None:
    """A label value from a JSON scalar; objects and arrays are not label values."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    return None


def _labels(mapping: Any) -> dict[str, str]:
    if not isinstance(mapping, dict):
        return {}
    return {str(k): text for k, v in mapping.items() if (text := _text(v)) is not None}


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _normalised(labels: dict[str, str], alertname: Any, service: Any, severity: Any) -> dict[str, str]:
    """The alert's own labels, with alertname, service and severity filled in where missing."""
    out = dict(labels)
    for key, fallback in (("alertname", alertname), ("service", service), ("severity", severity)):
        if not out.get(key):
            out[key] = _text(fallback) or ""
    return out


# ---------------------------------------------------------------------------------------------
# Values


# Prometheus templates' `humanize` writes 0.23 as "230m" and 1500 as "1.5k"
SI_PREFIXES = {"k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "m": 1e-3, "u": 1e-6, "µ": 1e-6, "n": 1e-9}
_SI_NUMBER = re.compile(r"^([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s?([kMGTmuµn])$")


class ValueReader:
    """Reads an alert's value where its source puts it. After each `read`, `notes` holds why a
    value was dropped: parsers pass `values=reader.read(…), notes=reader.notes` (keyword
    arguments are evaluated left to right)."""

    def __init__(self, options: AlertsConfig):
        self.options = options
        self.notes: list[str] = []

    def number(self, raw: Any, where: str) -> float | None:
        if raw is None or raw == "":
            return None
        text = raw.strip() if isinstance(raw, str) else raw
        percent = isinstance(text, str) and text.endswith("%")
        scale = 1.0
        if isinstance(text, str) and (prefixed := _SI_NUMBER.match(text)):
            text, scale = prefixed.group(1), SI_PREFIXES[prefixed.group(2)]  # Prometheus' humanize: "230m"
        try:
            if isinstance(text, bool) or not isinstance(text, (str, int, float)):
                raise ValueError
            number = float(text.rstrip("%") if isinstance(text, str) else text) * scale
        except (ValueError, OverflowError):
            shown = repr(raw[:40]) if isinstance(raw, str) else f"(a JSON {type(raw).__name__})"
            self.notes.append(f"{where} {shown} is not a number: treated as absent")
            return None
        if not math.isfinite(number):
            self.notes.append(f"{where} is {number}, not a finite number: treated as absent")
            return None
        return number / 100 if percent or self.options.value_unit == "percent" else number

    def _pick(self, values: dict[str, Any], where: str) -> Any:
        ref = self.options.grafana_value_ref
        if ref in values:
            return values[ref]
        if len(values) == 1:
            return next(iter(values.values()))
        if values:
            self.notes.append(f"{where} has refs {', '.join(sorted(values))} and none is {ref!r} "
                              "(alerts.grafana_value_ref): no value taken")
        return None

    def read(self, fields: dict, grafana: dict | None = None, value_string: Any = None) -> dict[str, float]:
        """error_rate from the named value field (else Grafana's values / valueString); explicit
        `error_rate` and `p95_latency_ms` fields win. `notes` then says what this reading dropped."""
        self.notes = []
        found: dict[str, float] = {}
        name = self.options.value_annotation
        rate = self.number(fields.get(name), name)
        if rate is None and grafana:
            rate = self.number(self._pick(grafana, "values"), "values")
        if rate is None and isinstance(value_string, str) and value_string:
            parsed = {m.group(1): m.group(2) for m in _VALUE_STRING.finditer(value_string)}
            rate = self.number(self._pick(parsed, "valueString"), "valueString")
        for key in ("error_rate", "p95_latency_ms"):
            explicit = self.number(fields.get(key), key)
            if explicit is not None:
                found[key] = explicit
        if rate is not None:
            found.setdefault("error_rate", rate)
        if "p95_latency_ms" in found and self.options.value_unit == "percent":
            found["p95_latency_ms"] *= 100  # milliseconds are not a percentage
        return found


# Grafana: "[ var='B' labels={service=shop} value=0.23 ], [ var='C' labels={} value=1 ]"
# (older: "[ metric='' labels={} value=14151.33 ]")
# (classic conditions: "[ var='B0' metric='shop' labels={service=shop} value=0.23 ]")
_VALUE_STRING = re.compile(r"\[\s*(?:var|metric)='([^']*)'(?:\s+metric='[^']*')?\s+labels=\{.*?\}\s+"
                           r"value=([^\s\]]+)\s*\]")


# ---------------------------------------------------------------------------------------------
# Sources


def _prometheus_style(source: str, body: dict, values: ValueReader) -> list[Alert]:
    """Alertmanager v4 and Grafana webhook contact points (same envelope)."""
    items = body["alerts"]
    if not isinstance(items, list):
        raise TypeError("alerts is not a list")
    common = _labels(body.get("commonLabels"))
    alerts = []
    for item in items:
        item = _dict(item)
        labels = {**common, **_labels(item.get("labels"))}
        annotations = _labels(item.get("annotations"))
        status = _text(item.get("status")) or _text(body.get("status")) or "firing"
        fingerprint = _text(item.get("fingerprint")) or json.dumps(labels, sort_keys=True)
        links = [url for key in ("generatorURL", "dashboardURL", "panelURL") if (url := _text(item.get(key)))]
        alerts.append(Alert(
            source=source, status=status, fingerprint=fingerprint, severity=labels.get("severity"),
            summary=annotations.get("summary") or labels.get("alertname", ""),
            labels=_normalised(labels, None, None, None),
            values=values.read(_dict(item.get("annotations")), _dict(item.get("values")), item.get("valueString")),
            notes=values.notes,
            links=links,
            # Alertmanager re-sends a firing group with the same startsAt (a repeat); after it
            # resolved, the same alert fires with a new startsAt (a new occurrence).
            occurrence=f"{fingerprint}|{_text(item.get('startsAt')) or ''}",
        ))
    return alerts


GRAFANA_LEGACY_STATES = {"alerting": "firing", "no_data": "firing", "ok": "resolved"}  # pending, paused: info


def parse_grafana(body: dict, headers: dict[str, str], values: ValueReader) -> list[Alert]:
    """Grafana's unified alerting (Alertmanager's envelope), or a legacy dashboard alert (Grafana
    up to 10: `ruleName`, `state`, `evalMatches`, `tags`)."""
    if "alerts" in body or not {"ruleName", "evalMatches"} & body.keys():
        return _prometheus_style("grafana", body, values)
    tags = _labels(body.get("tags"))
    matches = [_dict(m) for m in body.get("evalMatches") or [] if isinstance(m, dict)]
    series = {(_text(m.get("metric")) or str(number)): m.get("value") for number, m in enumerate(matches)}
    rule = _text(body.get("ruleId")) or _text(body.get("ruleName")) or ""
    return [Alert(
        source="grafana", status=GRAFANA_LEGACY_STATES.get(_text(body.get("state")) or "", "info"),
        fingerprint=f"legacy:{rule}", severity=tags.get("severity"),
        summary=_text(body.get("title")) or _text(body.get("ruleName")) or "",
        labels=_normalised(tags, body.get("ruleName"), None, None),
        values=values.read({}, series), notes=values.notes,
        links=[url] if (url := _text(body.get("ruleUrl"))) else [],
        occurrence="")]  # no time in it: a reminder and a new firing look the same, so neither is a replay


_SENTRY_PROJECT_IN_URL = re.compile(r"/projects/[^/]+/([^/]+)/")


def _sentry_issue_project(event: dict, issue: dict) -> str | None:
    """The project slug of an issue alert: the event's `project` when it is a slug (the
    documented example has a numeric id), else from the event's API URL, else the issue's."""
    project = event.get("project")
    if isinstance(project, str) and project and not project.isdigit():
        return project
    found = _SENTRY_PROJECT_IN_URL.search(_text(event.get("url")) or "")
    return found.group(1) if found else _text(_dict(issue.get("project")).get("slug"))


def _sentry_tags(raw: Any) -> dict[str, str]:
    if isinstance(raw, dict):
        return _labels(raw)
    pairs = raw if isinstance(raw, list) else []
    return {key: text for t in pairs
            if isinstance(t, list) and len(t) == 2 and (key := _text(t[0])) and (text := _text(t[1])) is not None}


def parse_sentry(body: dict, headers: dict[str, str], values: ValueReader) -> list[Alert]:
    resource = headers.get("sentry-hook-resource", "")
    action = _text(body.get("action")) or ""
    data = _dict(body.get("data"))
    delivery = headers.get("request-id", "")
    if resource == "metric_alert" or "metric_alert" in data:
        metric = _dict(data.get("metric_alert"))
        rule = _dict(metric.get("alert_rule"))
        projects = rule.get("projects") or metric.get("projects") or [None]
        status = "resolved" if action == "resolved" else "firing" if action in ("critical", "warning") else "info"
        tags = _labels(rule.get("tags"))
        if environment := _text(rule.get("environment")):  # the rule's, as an issue alert's event tags have it
            tags.setdefault("environment", environment)
        links = [url] if (url := _text(data.get("web_url"))) else []
        fingerprint = f"metric:{_text(metric.get('id')) or _text(rule.get('id'))}"
        alerts = []
        for project in projects if isinstance(projects, list) else [projects]:
            labels = _normalised(tags, rule.get("name"), project, action if status == "firing" else None)
            alerts.append(Alert(
                source="sentry", status=status, fingerprint=fingerprint,
                severity=labels["severity"] or None, labels=labels,
                summary=_text(data.get("description_title")) or _text(rule.get("name")) or "",
                values=values.read(tags), notes=values.notes, links=links,
                occurrence=f"{delivery}|{_text(project) or ''}" if delivery else ""))
        return alerts
    if resource == "issue" or "issue" in data and "event" not in data:
        issue = _dict(data.get("issue"))
        status = {"created": "firing", "unresolved": "firing", "resolved": "resolved"}.get(action, "info")
        labels = _normalised({}, issue.get("title"), _sentry_issue_project({}, issue), issue.get("level"))
        return [Alert(source="sentry", status=status, fingerprint=f"issue:{_text(issue.get('id'))}",
                      severity=labels["severity"] or None, summary=_text(issue.get("title")) or "", labels=labels,
                      links=[url] if (url := _text(issue.get("web_url"))) else [], occurrence=delivery)]
    event = _dict(data.get("event"))
    level = _text(event.get("level"))
    alertname = data.get("triggered_rule") or _dict(data.get("issue_alert")).get("title")
    labels = _normalised(_sentry_tags(event.get("tags")), alertname, _sentry_issue_project(event, {}), level)
    return [Alert(source="sentry", status="firing" if action == "triggered" else "info",
                  fingerprint=f"issue:{_text(event.get('issue_id'))}", severity=labels["severity"] or None,
                  summary=_text(event.get("title")) or "", labels=labels, values=values.read(event), notes=values.notes,
                  links=[url] if (url := _text(event.get("web_url"))) else [], occurrence=delivery)]


DATADOG_FIRING = ("triggered", "re-triggered", "warn", "re-warn", "renotify", "no data", "re-no data")
# Datadog sends a renotification of the same alert cycle with a new event id: the same occurrence
# as the notification it repeats (keyed by $ALERT_CYCLE_KEY when the template has it).
DATADOG_REPEATS = {"re-triggered": "Triggered", "renotify": "Triggered", "re-warn": "Warn", "re-no data": "No Data"}
# "[P1] [Recovered on {service:shop}] Checkout 5xx": $EVENT_TITLE carries the transition
_DATADOG_TITLE_TRANSITION = re.compile(
    r"^\s*(?:\[[^\]]*\]\s*)*?\[\s*(Re-Triggered|Triggered|Recovered|Re-Warn|Warn|Re-No Data|No Data|Renotify)\b",
    re.IGNORECASE)
# $ALERT_TYPE / $EVENT_TYPE-style alert types: "success" is how Datadog marks a recovery
_DATADOG_ALERT_TYPES = {"error": "Triggered", "warning": "Warn", "success": "Recovered"}
_DATADOG_PRIORITY = re.compile(r"^P[0-5]$", re.IGNORECASE)


def _datadog_tags(*raws: Any) -> dict[str, str]:
    """`$ALERT_SCOPE` / `$TAGS`: "service:checkout, env:prod" (or a JSON list of such); the first
    raw that has a key wins, so the scope (the group that fired) goes before the monitor's tags."""
    tags: dict[str, str] = {}
    for raw in raws:
        items = raw if isinstance(raw, list) else (_text(raw) or "").split(",")
        for tag in items:
            key, sep, value = (_text(tag) or "").strip().partition(":")
            if sep and key:
                tags.setdefault(key, value)
    return tags


def _first(body: dict, *names: str) -> str:
    return next((text for name in names if (text := _text(body.get(name)))), "")


def _datadog_transition(fields: dict, title: str) -> str:
    """$ALERT_TRANSITION where the template has it, else the `[Recovered on …]` of the title
    (Datadog's default payload), else $ALERT_TYPE (`success` is a recovery); else Triggered: a
    monitor notification that says nothing more is an alert."""
    if explicit := _first(fields, "transition", "alert_transition"):
        return explicit
    if found := _DATADOG_TITLE_TRANSITION.match(title):
        return found.group(1).title()  # "re-no data" -> "Re-No Data", as $ALERT_TRANSITION writes it
    return _DATADOG_ALERT_TYPES.get(_first(fields, "alert_type").lower(), "Triggered")


def parse_datadog(body: dict, headers: dict[str, str], values: ValueReader) -> list[Alert]:
    """The Datadog payload is a template people write: the README's recommended template adds
    $ALERT_ID, $AGGREG_KEY, $ALERT_CYCLE_KEY, $ALERT_TRANSITION, $ALERT_PRIORITY, $ALERT_METRIC,
    $ALERT_TITLE, $ALERT_SCOPE and $TAGS to the default fields; the names with or without the
    `alert_` prefix are read, at the top level or in an `alert` object."""
    nested = _dict(body.get("alert"))
    fields = {**{k: v for k, v in nested.items() if not isinstance(v, (dict, list))},
              **{f"alert_{k}": v for k, v in nested.items() if not isinstance(v, (dict, list))}, **body}
    title = _first(fields, "alert_title", "title", "event_title")
    transition = _datadog_transition(fields, title)
    tags = _datadog_tags(fields.get("alert_scope") or fields.get("scope"), fields.get("tags"))
    if metric := _first(fields, "alert_metric", "metric"):
        tags.setdefault("metric", metric)
    # "[Triggered on {host:a}] Checkout 5xx" -> "Checkout 5xx": the monitor's name, stable across transitions
    alertname = re.sub(r"^(\s*\[[^\]]*\])+\s*", "", title)
    # $ALERT_PRIORITY is P1-P5; a `priority` field is often $PRIORITY, the event's normal/low
    priority = next((p for p in (_first(fields, "alert_priority"), _first(fields, "priority"))
                     if _DATADOG_PRIORITY.match(p)), "")
    kind = transition.lower()
    if priority:
        tags.setdefault("priority", priority.upper())
    # a warning threshold is a warning whatever the monitor's priority: never an automatic rollback
    severity = "warning" if kind in ("warn", "re-warn") else priority
    status = "resolved" if kind == "recovered" else "firing" if kind in DATADOG_FIRING else "info"
    event_id = _first(fields, "id", "event_id")
    cycle = _first(fields, "alert_cycle_key", "cycle_key")
    repeated = DATADOG_REPEATS.get(kind, transition)
    occurrence = (f"{cycle}|{repeated}" if cycle else f"{event_id}|{transition}" if event_id else "")
    labels = _normalised(tags, alertname, None, severity)
    return [Alert(source="datadog", status=status,
                  fingerprint=_first(fields, "aggreg_key", "alert_cycle_key", "alert_id") or event_id,
                  severity=labels["severity"] or None, summary=title, labels=labels,
                  values=values.read(fields), notes=values.notes,
                  links=[link] if (link := _first(fields, "link")) else [],
                  occurrence=occurrence)]


def ended_occurrences(alert: Alert) -> list[str]:
    """The occurrences of the firing notices a resolved alert ends: their replay records are
    forgotten, so the alert can fire again. Datadog keys each notice by its transition, and a
    recovery ends whichever of Triggered, Warn or No Data came before it."""
    if alert.source == "datadog" and alert.occurrence.endswith("|Recovered"):
        key = alert.occurrence.removesuffix("|Recovered")
        return [f"{key}|{transition}" for transition in ("Triggered", "Warn", "No Data")]
    return [alert.occurrence]


PAGERDUTY_FIRING = ("incident.triggered", "incident.reopened", "incident.escalated")


def parse_pagerduty(body: dict, headers: dict[str, str], values: ValueReader) -> list[Alert]:
    event = body["event"]
    data = _dict(event.get("data"))
    kind = _text(event.get("event_type")) or ""
    priority = _text(_dict(data.get("priority")).get("summary"))
    urgency = _text(data.get("urgency"))
    own = {k: v for k, v in (("priority", priority), ("urgency", urgency)) if v}
    labels = _normalised(own, data.get("title"), _dict(data.get("service")).get("summary"), priority or urgency)
    status = ("resolved" if kind == "incident.resolved" else "firing" if kind in PAGERDUTY_FIRING
              else "acknowledged" if kind == "incident.acknowledged" else "info")  # annotated, …: recorded only
    return [Alert(source="pagerduty", status=status,
                  acknowledged_by=_text(_dict(event.get("agent")).get("summary")) or "someone in PagerDuty"
                  if status == "acknowledged" else "",
                  fingerprint=_text(data.get("incident_key")) or _text(data.get("id")) or "",
                  severity=labels["severity"] or None, summary=_text(data.get("title")) or "", labels=labels,
                  links=[url] if (url := _text(data.get("html_url"))) else [],
                  occurrence=_text(event.get("id")) or "")]


def parse_generic(body: dict, headers: dict[str, str], values: ValueReader) -> list[Alert]:
    service = _text(body["service"])
    if not service:
        raise ValueError("service")
    labels = _normalised({**_labels(body.get("labels")), "service": service},  # mapped like any source's
                         body.get("alertname") or body.get("summary"), None, body.get("severity"))
    return [Alert(source="generic", status=_text(body.get("status")) or "firing",
                  fingerprint=_text(body.get("fingerprint")) or "", severity=labels["severity"] or None,
                  summary=_text(body.get("summary")) or "", labels=labels, values=values.read(body),
                  notes=values.notes)]


PARSERS: dict[str, Callable[[dict, dict, ValueReader], list[Alert]]] = {
    "alertmanager": lambda body, headers, values: _prometheus_style("alertmanager", body, values),
    "grafana": parse_grafana,
    "sentry": parse_sentry,
    "datadog": parse_datadog,
    "pagerduty": parse_pagerduty,
    "generic": parse_generic,
}
SOURCES = tuple(PARSERS)  # one endpoint each: /alerts/<source>


def parse(source: str, raw: bytes, headers: dict[str, str], options: AlertsConfig | None = None,
          check_timestamps: bool = True) -> list[Alert]:
    """The normalised alerts in a delivery; Refused(400) when it is not what the source sends,
    Refused(401) when its signed timestamp is stale, in the future or missing (unless
    `check_timestamps` is off, as for a saved payload)."""
    body = load_json(raw)
    if source == "pagerduty" and "event" not in body and isinstance(body.get("messages"), list):
        raise Refused(400, "malformed", "a PagerDuty v2 webhook (messages[]): PagerDuty retired v2 webhooks; add a v3 "
                      "webhook subscription (Integrations > Generic Webhooks (v3)) instead")
    if check_timestamps:
        check_fresh(source, headers, body)
    values = ValueReader(options or AlertsConfig())
    try:
        alerts = PARSERS[source](body, headers, values)
    except RecursionError:  # parsers never recurse into values; a safety net all the same
        raise Refused(400, "too_deep", "JSON nested too deeply") from None
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise Refused(400, "malformed", f"not a {source} payload: missing or bad {str(exc)[:80]}") from None
    return alerts
