"""Alerts for a run that is already open, forwarded in batches instead of one signal each.

A storm of thousands of alerts on one open rollback must not become thousands of history
events (Temporal refuses signals past its limits, and every query and result grows with them).
The receiver writes each such alert to a durable outbox under the state directory and answers
at once; a forwarder sends each open run one `alerts` signal per interval with the alerts
counted per fingerprint, and deletes what was delivered. An acknowledged alert survives a
receiver restart (the outbox is SQLite, WAL) and a Temporal outage (rows stay until delivered).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from workflows.models import AlertBatch, AlertCount, AlertNotice

log = logging.getLogger("rollback.webhook")
# In a storm one signal per run this often: an hour of storm is ~720 signals (~3,000 history
# events), far from Temporal's limits; the first alert after a quiet spell goes at once.
FORWARD_EVERY_SECONDS = 5.0
BATCH_ROWS = 20_000  # rows read per run and round; fingerprints in one signal stay far below 2 MB
MAX_FINGERPRINTS_PER_SIGNAL = 200  # itemised per signal; the rest counted


class AlertOutbox:
    def __init__(self, path: Path):
        self.directory = path.parent
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=5, isolation_level=None, check_same_thread=False)
        # WAL + synchronous=NORMAL, as the replay store: a commit survives the receiver's crash
        # without an fsync per alert on the request path (a power cut may lose the last ones)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY, workflow_id TEXT NOT NULL, "
                         "at REAL NOT NULL, notice TEXT NOT NULL, fallback TEXT)")
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        if "fallback" not in columns:  # an outbox an earlier version wrote
            self._db.execute("ALTER TABLE outbox ADD COLUMN fallback TEXT")
        self._lock = threading.Lock()

    def put(self, workflow_id: str, notice: AlertNotice, fallback: str | None = None) -> None:
        """Queue `notice` for the open run `workflow_id`; `fallback` (JSON: the start request the
        alert's decision would make) starts a new run with it if that one has ended meanwhile."""
        with self._lock:
            self._db.execute("INSERT INTO outbox (workflow_id, at, notice, fallback) VALUES (?, ?, ?, ?)",
                             (workflow_id, time.time(), notice.model_dump_json(), fallback))

    def pending(self) -> dict[str, list[tuple[int, float, AlertNotice, str | None]]]:
        with self._lock:
            rows = self._db.execute("SELECT id, workflow_id, at, notice, fallback FROM outbox ORDER BY id LIMIT ?",
                                    (BATCH_ROWS,)).fetchall()
        found: dict[str, list[tuple[int, float, AlertNotice, str | None]]] = {}
        for row_id, workflow_id, at, notice, fallback in rows:
            found.setdefault(workflow_id, []).append((row_id, at, AlertNotice.model_validate_json(notice), fallback))
        return found

    def delete(self, row_ids: list[int]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in row_ids])

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def counted(rows: list[tuple]) -> AlertBatch:
    """The rows as one batch: the first MAX_FINGERPRINTS_PER_SIGNAL fingerprints itemised with
    their counts (resolved ones always), the rest only counted."""
    by_fingerprint: dict[str, AlertCount] = {}
    others: list[tuple[float, AlertNotice]] = []
    # an alert that resolved is always itemised: a run watching for its alert to resolve must see it
    changed = {row[2].fingerprint or row[2].summary for row in rows if row[2].status != "firing"}
    for _, at, notice, *_ in rows:
        seen = datetime.fromtimestamp(at, timezone.utc)
        key = notice.fingerprint or notice.summary
        item = by_fingerprint.get(key)
        if item is None:
            if len(by_fingerprint) >= MAX_FINGERPRINTS_PER_SIGNAL and key not in changed:
                others.append((at, notice))
                continue
            by_fingerprint[key] = AlertCount(fingerprint=key, source=notice.source, status=notice.status,
                                             summary=notice.summary, count=1, first_seen=seen, last_seen=seen)
        else:
            item.count += 1
            item.status, item.last_seen = notice.status, seen  # the newest state of that alert
            item.summary = notice.summary or item.summary
    return AlertBatch(items=list(by_fingerprint.values()), others=len(others),
                      other_fingerprints=len({n.fingerprint or n.summary for _, n in others}))


def keep(directory: Path, workflow_id: str, alerts: list[tuple[float, AlertNotice]]) -> None:
    """Every alert forwarded to a run, one JSON line each: the full record behind the counts the
    run keeps, for the post-mortem and for people."""
    if not alerts:
        return
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / f"{workflow_id}.jsonl").open("a") as fh:
        for at, notice in alerts:
            fh.write(f'{{"at": {at}, "alert": {notice.model_dump_json()}}}\n')


class AlertForwarder:
    """Knows which services' runs are open, queues their alerts, and forwards them in batches."""

    def __init__(self, client: Client, restart: Callable[[str, AlertNotice], Awaitable[str]] | None = None):
        self._client = client
        self._restart = restart  # starts what a queued alert's fallback says; returns the new run's ID
        self._outboxes: dict[Path, AlertOutbox] = {}
        self._task: asyncio.Task | None = None
        self.forwarded = 0

    def outbox(self, state_dir: str) -> AlertOutbox:
        path = Path(state_dir) / "webhook" / "outbox.sqlite"
        if path not in self._outboxes:
            self._outboxes[path] = AlertOutbox(path)
        return self._outboxes[path]

    async def is_open(self, workflow_id: str) -> bool:
        """Whether the run with this ID is running: one read, which adds nothing to its history
        (a run that just ended must not swallow the alert that should start the next one)."""
        try:
            description = await self._client.get_workflow_handle(workflow_id).describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return False
            raise
        return description.status == WorkflowExecutionStatus.RUNNING

    def queued(self) -> int:
        return sum(outbox.count() for outbox in self._outboxes.values())

    def queue(self, state_dir: str, workflow_id: str, notice: AlertNotice, fallback: str | None = None) -> None:
        self.outbox(state_dir).put(workflow_id, notice, fallback)
        self.start()

    def start(self) -> None:
        """Forward in the background (again) if nothing does yet: also after a restart, for what
        the outbox still holds."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._forward_until_idle())

    async def _forward_until_idle(self) -> None:
        """The first alert after a quiet spell goes out at once; in a storm, one round every few seconds."""
        idle_rounds = 0
        while idle_rounds < 12:  # a minute without alerts: stop until the next one
            await asyncio.sleep(0)  # let the request that queued the alert finish first
            try:
                sent = await self.forward_once()
            except Exception:  # noqa: BLE001 - keep forwarding; what failed stays in the outbox
                log.exception("forwarding queued alerts failed; will retry")
                sent = 1
            idle_rounds = 0 if sent else idle_rounds + 1
            await asyncio.sleep(FORWARD_EVERY_SECONDS)

    async def forward_once(self) -> int:
        """One round: each open run gets one signal with its queued alerts. Returns rows handled."""
        handled = 0
        for outbox in list(self._outboxes.values()):
            for workflow_id, rows in (await asyncio.to_thread(outbox.pending)).items():
                batch = counted(rows)
                covered = [row[0] for row in rows]
                try:
                    await self._client.get_workflow_handle(workflow_id).signal("alerts", batch)
                except RPCError as exc:
                    if exc.status != RPCStatusCode.NOT_FOUND:
                        log.warning("could not forward %d alert(s) to %s (%s); kept for the next round",
                                    len(covered), workflow_id, exc.message)
                        continue
                    if not await self._start_successor(outbox, workflow_id, rows):
                        continue  # Temporal unavailable: kept for the next round
                await asyncio.to_thread(keep, outbox.directory / "alerts", workflow_id,
                                        [(at, notice) for _, at, notice, _ in rows])
                await asyncio.to_thread(outbox.delete, covered)
                self.forwarded += len(covered)
                handled += len(covered)
        return handled

    async def _start_successor(self, outbox: AlertOutbox, workflow_id: str, rows: list[tuple]) -> bool:
        """The run ended before its queued alerts reached it. Alerts whose decision starts a run
        (a rollback, an incident) start it now, as the receiver would have had it known: the first
        through signal-with-start, the rest queued for the new run. The others are only recorded.
        False when that start could not be made (kept for the next round)."""
        acting = [row for row in rows if row[3]]
        if not acting or self._restart is None:
            log.warning("run %s has ended: %d queued alert(s) recorded, none starts a run", workflow_id, len(rows))
            return True
        _, _, first, fallback = acting[0]
        try:
            successor = await self._restart(fallback, first)
        except RPCError as exc:
            log.warning("run %s has ended; starting its successor failed (%s); kept for the next round",
                        workflow_id, exc.message)
            return False
        for _, _, notice, later in acting[1:]:
            await asyncio.to_thread(outbox.put, successor, notice, later)
        log.info("run %s had ended: %d queued alert(s) went to %s", workflow_id, len(acting), successor)
        return True

    async def stop(self) -> None:
        """Deliver what is queued (best effort), then close the outboxes."""
        if self._task is not None:
            self._task.cancel()
        try:
            await self.forward_once()
        except Exception:  # noqa: BLE001 - what could not be sent stays in the outbox for the next start
            log.warning("queued alerts kept for the next start")
        for outbox in self._outboxes.values():
            outbox.close()
        self._outboxes.clear()
