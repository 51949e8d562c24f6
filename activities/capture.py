"""Incident artifacts: the post-mortem document rendered from a run's timeline."""

from __future__ import annotations

import json
from pathlib import Path

from temporalio import activity

from activities.common import ConfigSource, write_artifact

from workflows.models import IncidentPostmortemRequest, PostmortemRequest

DURATION_NAMES = {"time_to_detect": "Time to detect (MTTD)", "time_to_acknowledge": "Time to acknowledge (MTTA)",
                  "time_to_mitigate": "Time to mitigate (MTTM)", "time_to_resolve": "Time to resolve (MTTR)"}


MARKDOWN_SPECIAL = "\\`*_[]<>|#"


def md(text: object) -> str:
    """Text from outside (alert labels and summaries, reasons people typed) as literal Markdown:
    no links, images, HTML or table breaks can be injected into a post-mortem."""
    return "".join("\\" + c if c in MARKDOWN_SPECIAL else c for c in str(text)).replace("\n", " ")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    minutes, rest = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return (f"{hours} h {minutes} min" if hours else f"{minutes} min {rest} s" if minutes else f"{rest} s") \
        + f" ({seconds:g} s)"


def render_incident_postmortem(request: IncidentPostmortemRequest) -> str:
    """Runbook 001's post-mortem template, filled from the incident's timeline."""
    lines = [f"# Post-Mortem: {md(request.title)}", "", "## Summary", ""]
    lines += [f"- **{key}**: {md(value)}" for key, value in request.summary.items()]
    lines += ["", "## Durations", ""]
    lines += [f"- **{DURATION_NAMES[k]}**: {_duration(v)}" for k, v in request.durations.items()]
    lines += ["", "## Timeline", "", "| time (UTC) | event | actor | what happened |", "| --- | --- | --- | --- |"]
    for event in request.timeline:
        lines.append(f"| {event.at:%Y-%m-%d %H:%M:%S} | {event.kind.value} | {md(event.actor)} | {md(event.message)} |")
    lines += ["", "## Decisions", ""] + [f"- {md(d)}" for d in request.decisions or ["none recorded"]]
    lines += ["", "## Resolution", ""] + [f"- {md(m)}" for m in request.methods or ["no rollback was needed"]]
    lines += ["", "## Evidence", ""] + [f"- {md(e)}" for e in request.evidence or ["none captured"]]
    lines += ["", "## Root Cause", "", "_to be written_", "", "## Impact Assessment", "",
              "- **Users Affected**: _to be written_", "- **Revenue Impact**: _to be written_", "",
              "## Lessons Learned", "", "_to be written_", "", "## Action Items", "",
              "- [ ] _action_ - _owner_ - _due date_", "", "## Prevention Measures", "", "_to be written_", ""]
    return "\n".join(lines)


def render_postmortem(request: PostmortemRequest) -> str:
    """Runbook 004's post-mortem template, with what the workflow already knows filled in."""
    lines = [f"# {md(request.title)}", ""]
    lines += [f"- **{key}**: {md(value)}" for key, value in request.summary.items()]
    lines += ["", "## Timeline", "", "| time (UTC) | event | actor | what happened |", "| --- | --- | --- | --- |"]
    for event in request.timeline:
        lines.append(f"| {event.at:%Y-%m-%d %H:%M:%S} | {event.kind.value} | {md(event.actor)} | {md(event.message)} |")
    if request.alerts:
        lines += ["", "## Alerts", "", "| alert | source | status | count | first seen | last seen |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for alert in request.alerts:
            lines.append(f"| {md(alert.summary or alert.fingerprint)} | {md(alert.source)} | {alert.status} | {alert.count} | "
                         f"{alert.first_seen or ''} | {alert.last_seen or ''} |")
    lines += ["", "## Root cause", "", "_to be written_", "", "## Action items", "", "- [ ] _to be written_", ""]
    return "\n".join(lines)


class CaptureActivities:
    def __init__(self, config: ConfigSource):
        self._config = config

    @activity.defn(name="capture.postmortem")
    async def postmortem(self, request: PostmortemRequest) -> str:
        path = write_artifact(Path(request.artifact_dir) / "postmortem.md", render_postmortem(request),
                              self._config.secrets())
        return str(path)

    @activity.defn(name="capture.incident_postmortem")
    async def incident_postmortem(self, request: IncidentPostmortemRequest) -> list[str]:
        """postmortem.md for people and postmortem.json for tools, both redacted, 0600."""
        secrets = self._config.secrets()
        directory = Path(request.artifact_dir)
        markdown = write_artifact(directory / "postmortem.md", render_incident_postmortem(request), secrets)
        document = json.dumps(request.model_dump(mode="json"), indent=2)
        data = write_artifact(directory / "postmortem.json", document, secrets)
        return [str(markdown), str(data)]
