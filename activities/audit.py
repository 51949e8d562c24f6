"""The audit log: one JSON line per start, decision, refusal and ending, with identity and channel.

Workflows append through the `audit.append` activity (they cannot write files); the Slack
receiver and the CLI append refusals they see directly. Appends take an exclusive lock, so the
worker, the receiver and the CLI can share one file.
"""

from __future__ import annotations

import fcntl
import json
import os
from datetime import datetime
from pathlib import Path

from temporalio import activity

from activities.common import ConfigSource
from workflows.config import RollbackConfig
from workflows.models import AuditBatch, AuditEntry

# A retried append finds the lines its earlier attempt wrote near the end of the file.
RECENT_BYTES = 256 * 1024


def audit_path(config: RollbackConfig) -> Path:
    return Path(config.audit_log) if config.audit_log else Path(config.state_dir) / "audit.jsonl"


def append_audit(path: Path, entries: list[AuditEntry]) -> int:
    """Append the entries not yet written (by id); returns how many were written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "r+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - RECENT_BYTES))
        recent = fh.read().decode(errors="replace")
        new = [e for e in entries if f'"id":{json.dumps(e.id)}' not in recent]
        fh.write("".join(e.model_dump_json() + "\n" for e in new).encode())
        fh.flush()
        os.fsync(fh.fileno())
    return len(new)


def read_audit(path: Path, service: str | None = None, since: datetime | None = None) -> list[AuditEntry]:
    """The log's entries by time, filtered; a line that does not parse is skipped. (A run's
    lines are appended at its checkpoints, so the file's order is not quite the time order.)"""
    if not path.exists():
        return []
    found = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = AuditEntry.model_validate_json(line)
        except ValueError:
            continue
        if (service is None or entry.service == service) and (since is None or entry.at >= since):
            found.append(entry)
    return sorted(found, key=lambda e: e.at)


class AuditActivities:
    def __init__(self, config: ConfigSource):
        self._config = config

    @activity.defn(name="audit.append")
    async def append(self, batch: AuditBatch) -> int:
        return append_audit(audit_path(self._config.config), batch.entries)
