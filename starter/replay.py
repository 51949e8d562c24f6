"""Which alert occurrences the receiver has already acted on, kept in SQLite under the state
directory so a retried delivery is still a replay after the receiver restarts.

A record expires after `webhooks.replay_ttl` (default 24 h): senders retry for minutes, not
days, and an alert that fires again after that is a new occurrence anyway. Each claim is one
atomic statement, so concurrent requests (and several receiver processes sharing the file)
never both act on the same occurrence.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

from activities.state import DELIVERY_KIND, StateStore, state_store
from workflows.config import RollbackConfig

PURGE_EVERY = 500  # claims between deletions of expired rows


class ReplayStore:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=5, isolation_level=None, check_same_thread=False)
        # WAL: readers never block the writer; synchronous=NORMAL: a commit does not wait for
        # fsync (a power cut may forget the last claims: their retries then act once more, and
        # the workflow ID and cooldown still stop a second rollback).
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY, at REAL NOT NULL)")
        self._lock = threading.Lock()
        self._claims = 0

    def claim(self, keys: list[str], ttl_seconds: float) -> list[bool]:
        """For each key: True when it is new (or its record expired), and record it now."""
        now = time.time()
        fresh = []
        with self._lock:
            for key in keys:
                cursor = self._db.execute(
                    "INSERT INTO seen (key, at) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET at = excluded.at WHERE seen.at < ?",
                    (key, now, now - ttl_seconds))
                fresh.append(cursor.rowcount == 1)
            self._claims += len(keys)
            if self._claims >= PURGE_EVERY:
                self._claims = 0
                self._db.execute("DELETE FROM seen WHERE at < ?", (now - ttl_seconds,))
        return fresh

    def forget(self, keys: list[str]) -> None:
        """Occurrences we did not act on after all (Temporal down): their retry is not a replay."""
        with self._lock:
            self._db.executemany("DELETE FROM seen WHERE key = ?", [(key,) for key in keys])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class SharedReplayStore:
    """The same records in the shared state store (PostgreSQL, `state_dsn_env`), so several
    receivers behind one load balancer see each other's deliveries."""

    def __init__(self, store: StateStore):
        self._store = store
        self._claims = 0

    def claim(self, keys: list[str], ttl_seconds: float) -> list[bool]:
        fresh = self._store.claim_fresh(DELIVERY_KIND, keys, ttl_seconds)
        self._claims += len(keys)
        if self._claims >= PURGE_EVERY:
            self._claims = 0
            self._store.prune(ttl_seconds, (DELIVERY_KIND,))
        return fresh

    def forget(self, keys: list[str]) -> None:
        self._store.forget(DELIVERY_KIND, keys)

    def close(self) -> None:
        pass  # the state store is shared with the rest of the process


class ReplayStores:
    """One store per location: the config may be edited while the receiver runs. With a state
    DSN the records are shared; else they are in `<state_dir>/webhook/deliveries.sqlite`."""

    FILE = ("webhook", "deliveries.sqlite")

    def __init__(self) -> None:
        self._stores: dict[str, ReplayStore | SharedReplayStore] = {}

    def get(self, config: RollbackConfig) -> ReplayStore | SharedReplayStore:
        if config.state_dsn_env:
            where = f"dsn:{config.state_dsn_env}:{os.environ.get(config.state_dsn_env, '')}"
            if where not in self._stores:
                self._stores[where] = SharedReplayStore(state_store(config))
            return self._stores[where]
        path = Path(config.state_dir).joinpath(*self.FILE)
        if str(path) not in self._stores:
            self._stores[str(path)] = ReplayStore(path)
        return self._stores[str(path)]

    def close(self) -> None:
        for store in self._stores.values():
            store.close()
        self._stores.clear()
