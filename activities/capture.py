"""Incident artifacts: the post-mortem document rendered from a run's timeline."""

from __future__ import annotations

from pathlib import Path

from temporalio import activity

from activities.common import ConfigSource, write_artifact

from workflows.models import PostmortemRequest


def render_postmortem(request: PostmortemRequest) -> str:
    """Runbook 004's post-mortem template, with what the workflow already knows filled in."""
    lines = [f"# {request.title}", ""]
    lines += [f"- **{key}**: {value}" for key, value in request.summary.items()]
    lines += ["", "## Timeline", "", "| time (UTC) | event | actor | what happened |", "| --- | --- | --- | --- |"]
    for event in request.timeline:
        message = event.message.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {event.at:%Y-%m-%d %H:%M:%S} | {event.kind.value} | {event.actor} | {message} |")
    if request.alerts:
        lines += ["", "## Alerts", "", "| alert | source | status | count | first seen | last seen |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for alert in request.alerts:
            summary = (alert.summary or alert.fingerprint).replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {summary} | {alert.source} | {alert.status} | {alert.count} | "
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
