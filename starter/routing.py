"""From a normalised alert to a decision: which service it belongs to, and what to do about it.

The receiver and `rollback alerts test` both call `route_and_decide`, so "why did my alert not
roll back?" is answered by the very code that handled it.
"""

from __future__ import annotations

from dataclasses import dataclass

from workflows.config import RollbackConfig
from workflows.models import Alert, AlertDecision
from workflows.policy import classify_severity, decide


@dataclass
class Verdict:
    alert: Alert
    service: str | None  # None: no configured service matches the alert
    decision: AlertDecision

    def describe(self) -> dict:
        """One alert as `rollback alerts test --json` prints it and the receiver answers it."""
        return {"service": self.service, "severity": self.decision.severity, "action": self.decision.action,
                "rule": self.decision.rule, "note": self.decision.note, "labels": self.alert.labels,
                "status": self.alert.status, "fingerprint": self.alert.fingerprint, "values": self.alert.values}


def route_and_decide(settings: RollbackConfig, alert: Alert) -> Verdict:
    """Route by the services' `alert_match`, then decide by the service's rules, the top-level
    rules, and the runbooks' matrix, in that order."""
    service = settings.service_for(alert.labels)
    if service is None:
        decision = AlertDecision(action="ignore", severity=classify_severity(alert), note="; ".join(alert.notes),
                                 rule=f"no configured service matches this alert "
                                      f"(service={alert.labels.get('service', '')!r}; see services.<name>.alert_match)")
        return Verdict(alert, None, decision)
    alert.service = service
    if not alert.labels.get("service"):
        alert.labels["service"] = service  # routed by other labels: rules may still match on service
    decision = decide(alert, settings.services[service].health, settings.alert_rules(service))
    if decision.action == "rollback" and decision.severity in settings.alerts.incident_severities:
        decision.action = "incident"
        decision.rule += f"; a rollback at {decision.severity} declares an incident (alerts.incident_severities)"
    return Verdict(alert, service, decision)
