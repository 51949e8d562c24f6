"""The state store: every record a retry or a second worker must see, in one table.

Deploy ledgers, rolled-away lists, last-stable versions, flag values, drill records, the incident artifacts
index and the idempotency records of outside calls (Slack, Statuspage, PagerDuty, deploy hooks)
are keyed JSON documents in `rollback_state (kind, key, value, updated_at)`:

- PostgreSQL when the config names `state_dsn_env` (the variable holding the DSN): shared by any
  number of workers; the table is created on first use under an advisory lock, so three workers
  starting at once do not trip over each other's CREATE TABLE.
- Otherwise a SQLite file (WAL) `<state_dir>/state.sqlite`, the embedded default that needs
  nothing installed.

Exactly once (`once`): the record's row is claimed *inside a transaction before* the side effect
and the result written in the same transaction after it. On PostgreSQL the row lock is held
during the call, so a second worker (or a zombie attempt Temporal already gave up on) waits and
then finds the result instead of calling again; if the worker dies, PostgreSQL rolls the claim
back and the retry calls again. The one window left is a crash after the vendor accepted the
call and before the commit: then the call is made twice. Slack has no idempotency key (a
message may be posted twice); Statuspage has none either, but the incident carries our key in
its metadata and a retry finds it before creating another (an update may be posted twice);
PagerDuty merges events by `dedup_key`, so a second `trigger` does not page twice; a deploy hook
redeploys the same commit. On SQLite the section is held by a lock inside the process, so
exactly-once holds for one worker process (the embedded default); use PostgreSQL for more.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from temporalio.exceptions import ApplicationError

from workflows.config import ConfigError, RollbackConfig

TABLE = "rollback_state"
# Records of calls made once: old ones are pruned after `state_retention_days` (a retry never
# comes that late). Ledgers and the like are kept: a service deployed months ago still rolls back.
IDEMPOTENCY_KINDS = ("slack", "statuspage", "statuspage-update", "pagerduty", "deploy-hook", "artifacts")
DELIVERY_KIND = "webhook-delivery"
LOCK_WAIT_SECONDS = 20  # how long a call waits for another worker making the same call
SCHEMA_LOCK = 7_400_000_014  # pg advisory lock id for creating the table


class StateUnavailable(Exception):
    """The state store cannot be reached or written."""


class Once:
    """What an exactly-once section sees: the result of an earlier call, or the duty to call."""

    def __init__(self, result: Any) -> None:
        self.done = result is not None
        self.result = result
        self.recorded: Any = None

    def record(self, result: Any) -> None:
        if result is None:
            raise ValueError("record a value (not None) so a retry can tell the call was made")
        self.recorded = result


class StateStore:
    """Keyed JSON documents. Synchronous; async callers use the `a…` methods or `once`."""

    placeholder = "%s"

    def sql(self, text: str) -> str:
        return text.replace("%s", self.placeholder)

    # -- the small API ------------------------------------------------------------------------
    def get(self, kind: str, key: str, default: Any = None) -> Any:
        with self._transaction() as db:
            row = db.execute(self.sql(f"SELECT value FROM {TABLE} WHERE kind = %s AND key = %s"), (kind, key)).fetchone()
        return default if row is None or row[0] is None else json.loads(row[0])

    def put(self, kind: str, key: str, value: Any) -> None:
        self.update(kind, key, lambda _: value)

    def update(self, kind: str, key: str, change: Callable[[Any], Any], default: Any = None) -> Any:
        """Read, change and write one document atomically (two workers never lose each other's
        change); `change` gets the current value (or `default`) and returns the new one."""
        with self._transaction(write=True) as db:
            current = self._locked(db, kind, key)
            value = change(default if current is None else json.loads(current))
            db.execute(self.sql(f"UPDATE {TABLE} SET value = %s, updated_at = %s WHERE kind = %s AND key = %s"),
                       (json.dumps(value, sort_keys=True, default=str), time.time(), kind, key))
        return value

    def keys(self, kind: str) -> list[str]:
        with self._transaction() as db:
            rows = db.execute(self.sql(f"SELECT key FROM {TABLE} WHERE kind = %s AND value IS NOT NULL ORDER BY key"),
                              (kind,)).fetchall()
        return [r[0] for r in rows]

    async def aget(self, kind: str, key: str, default: Any = None) -> Any:
        return await asyncio.to_thread(self.get, kind, key, default)

    async def aupdate(self, kind: str, key: str, change: Callable[[Any], Any], default: Any = None) -> Any:
        return await asyncio.to_thread(self.update, kind, key, change, default)

    @contextlib.asynccontextmanager
    async def once(self, kind: str, key: str) -> AsyncIterator[Once]:
        """An exactly-once section for one outside call:

            async with store.once("slack", key) as once:
                if once.done:
                    return once.result
                ...call...
                once.record(result)

        The claim and the record are one transaction holding the record's row; an exception
        (or leaving without `record`) rolls the claim back, so the retry calls again.
        """
        db = await asyncio.to_thread(self._begin_once, kind, key)
        try:
            current = await asyncio.to_thread(self._locked, db, kind, key, True)
            section = Once(None if current is None else json.loads(current))
            yield section
            if section.recorded is not None and not section.done:
                await asyncio.to_thread(self._finish_once, db, kind, key, section.recorded)
            else:
                await asyncio.to_thread(self._abandon_once, db)
        except BaseException:
            await asyncio.to_thread(self._abandon_once, db)
            raise

    def claim_fresh(self, kind: str, keys: list[str], ttl_seconds: float) -> list[bool]:
        """For each key: True when it is new (or its record is older than the ttl), and record it."""
        now, fresh = time.time(), []
        with self._transaction(write=True) as db:
            for key in keys:
                cursor = db.execute(self.sql(
                    f"INSERT INTO {TABLE} (kind, key, value, updated_at) VALUES (%s, %s, 'true', %s) "
                    f"ON CONFLICT (kind, key) DO UPDATE SET updated_at = excluded.updated_at "
                    f"WHERE {TABLE}.updated_at < %s"), (kind, key, now, now - ttl_seconds))
                fresh.append(cursor.rowcount == 1)
        return fresh

    def forget(self, kind: str, keys: list[str]) -> None:
        with self._transaction(write=True) as db:
            for key in keys:
                db.execute(self.sql(f"DELETE FROM {TABLE} WHERE kind = %s AND key = %s"), (kind, key))

    def prune(self, older_than_seconds: float, kinds: tuple[str, ...] = IDEMPOTENCY_KINDS) -> int:
        """Delete records of these kinds not written for that long; returns how many."""
        cutoff = time.time() - older_than_seconds
        with self._transaction(write=True) as db:
            marks = ", ".join(["%s"] * len(kinds))
            cursor = db.execute(self.sql(f"DELETE FROM {TABLE} WHERE kind IN ({marks}) AND updated_at < %s"),
                                (*kinds, cutoff))
            return cursor.rowcount

    # -- backend parts ------------------------------------------------------------------------
    def _locked(self, db, kind: str, key: str, waiting: bool = False) -> str | None:
        """Make sure the row exists and hold it until the transaction ends; its value (None: unset)."""
        try:
            db.execute(self.sql(f"INSERT INTO {TABLE} (kind, key, value, updated_at) VALUES (%s, %s, NULL, %s) "
                                "ON CONFLICT (kind, key) DO NOTHING"), (kind, key, time.time()))
            row = db.execute(self.sql(f"SELECT value FROM {TABLE} WHERE kind = %s AND key = %s{self.for_update}"),
                             (kind, key)).fetchone()
        except Exception as exc:
            if waiting and self._is_lock_timeout(exc):
                raise ApplicationError(f"another worker is making the same {kind} call ({key}) right now; "
                                       "retrying once it has finished", type="StateBusy") from None
            raise
        return row[0]

    for_update = ""

    def _is_lock_timeout(self, exc: Exception) -> bool:
        return False

    def _transaction(self, write: bool = False):
        raise NotImplementedError

    def _begin_once(self, kind: str, key: str):
        raise NotImplementedError

    def _finish_once(self, db, kind: str, key: str, result: Any) -> None:
        db.execute(self.sql(f"UPDATE {TABLE} SET value = %s, updated_at = %s WHERE kind = %s AND key = %s"),
                   (json.dumps(result, sort_keys=True, default=str), time.time(), kind, key))
        db.commit()
        db.close()

    def _abandon_once(self, db) -> None:
        with contextlib.suppress(Exception):
            db.rollback()
        with contextlib.suppress(Exception):
            db.close()

    def close(self) -> None:
        pass


class SqliteStore(StateStore):
    """The embedded default: one file, WAL (readers never wait for the writer)."""

    placeholder = "?"
    BUSY_SECONDS = 30

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._connect()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (kind TEXT NOT NULL, key TEXT NOT NULL, value TEXT, "
                         "updated_at REAL NOT NULL, PRIMARY KEY (kind, key))")
        self._lock = threading.Lock()
        self._sections: dict[tuple[str, str], list] = {}  # in-process exactly-once sections: [lock, users]

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.BUSY_SECONDS, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    @contextlib.contextmanager
    def _transaction(self, write: bool = False):
        with self._lock:
            if not write:
                yield self._db
                return
            self._db.execute("BEGIN IMMEDIATE")  # the file's write lock, across processes too
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextlib.asynccontextmanager
    async def once(self, kind: str, key: str) -> AsyncIterator[Once]:
        """As `StateStore.once`, but the section is held by a lock in this process, not by the
        file's write lock: holding that across an outside call would stall every other write
        (and the threads waiting for it). So on SQLite only one worker host is exactly-once."""
        slot = self._sections.setdefault((kind, key), [asyncio.Lock(), 0])
        slot[1] += 1
        try:
            async with slot[0]:
                section = Once(await self.aget(kind, key))
                yield section
                if section.recorded is not None and not section.done:
                    await self.aupdate(kind, key, lambda _: section.recorded)
        finally:
            slot[1] -= 1
            if not slot[1]:
                self._sections.pop((kind, key), None)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class PostgresStore(StateStore):
    """Shared by every worker and receiver: transactions and row locks."""

    for_update = " FOR UPDATE"

    def __init__(self, dsn: str):
        import psycopg

        self._psycopg = psycopg
        self.dsn = dsn
        self._lock = threading.Lock()
        self._db = None
        with self._connect() as db:
            with db.transaction():
                # CREATE TABLE IF NOT EXISTS races with itself; the advisory lock serialises it
                db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                db.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (kind text NOT NULL, key text NOT NULL, value text, "
                           "updated_at double precision NOT NULL, PRIMARY KEY (kind, key))")
                db.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_age ON {TABLE} (kind, updated_at)")

    def _connect(self, autocommit: bool = True):
        try:
            return self._psycopg.connect(self.dsn, autocommit=autocommit, connect_timeout=10,
                                         application_name="rollback-state")
        except self._psycopg.OperationalError as exc:
            raise StateUnavailable(f"state database unreachable ({type(exc).__name__}); check $state_dsn_env") from None

    @contextlib.contextmanager
    def _transaction(self, write: bool = False):
        with self._lock:
            if self._db is None or self._db.closed or self._db.broken:
                self._db = self._connect()
            try:
                with self._db.transaction():
                    yield self._db
            except self._psycopg.OperationalError:
                self._db.close()  # reconnect next time (the server restarted)
                raise

    def _begin_once(self, kind: str, key: str):
        db = self._connect(autocommit=False)
        db.execute(f"SET LOCAL lock_timeout = '{LOCK_WAIT_SECONDS}s'")
        return db

    def _is_lock_timeout(self, exc: Exception) -> bool:
        return isinstance(exc, self._psycopg.errors.LockNotAvailable)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()


_stores: dict[tuple[str, str], StateStore] = {}
_stores_lock = threading.Lock()


def state_store(config: RollbackConfig) -> StateStore:
    """The store the config names: PostgreSQL through `state_dsn_env`, else `<state_dir>/state.sqlite`.
    One per process and location (the config may be edited while the worker runs)."""
    if config.state_dsn_env:
        dsn = os.environ.get(config.state_dsn_env)
        if not dsn:
            raise ConfigError(f"state_dsn_env names {config.state_dsn_env}, which is not set; export the state "
                              "database's DSN in it")
        where = ("postgres", dsn)
    else:
        where = ("sqlite", str(Path(config.state_dir) / "state.sqlite"))
    with _stores_lock:
        if where not in _stores:
            _stores[where] = PostgresStore(where[1]) if where[0] == "postgres" else SqliteStore(Path(where[1]))
        return _stores[where]


def _json_lines(text: str) -> list:
    """A JSON-lines file's records; a line cut short by a crash mid-write is skipped."""
    found = []
    for line in text.splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


# Files earlier versions wrote under state_dir: (glob, kind, key from the file's stem, parser).
LEGACY_FILES = (("docker/*.json", "docker-ledger", lambda stem: stem, json.loads),
                ("vercel/*-rolled-away.json", "vercel-rolled-away", lambda stem: stem.removesuffix("-rolled-away"),
                 json.loads),
                ("migrations/*.json", "migrations-stable", lambda stem: stem, json.loads),
                ("flags.json", "flags", lambda stem: "all", json.loads),
                ("drills/*.jsonl", "drills", lambda stem: stem, _json_lines))  # one drill record per line


def import_legacy_files(config: RollbackConfig, store: StateStore) -> int:
    """Copy ledgers an earlier version kept in files into the store, once (a document the
    store already has wins), so an upgrade loses no deploy history; the files are left alone."""
    imported = 0
    for pattern, kind, key_of, parse in LEGACY_FILES:
        for file in sorted(Path(config.state_dir).glob(pattern)):
            try:
                data = parse(file.read_text())
            except (OSError, ValueError):
                continue
            key = key_of(file.stem)
            if store.get(kind, key) is None:
                store.update(kind, key, lambda current: data if current is None else current)
                imported += 1
    return imported
