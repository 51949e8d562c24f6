"""The state store (activities/state.py) on real PostgreSQL and on the SQLite default: atomic
updates, exactly-once sections across "workers" (separate store objects, separate connections),
schema creation by several workers at once, pruning by age."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from activities.state import IDEMPOTENCY_KINDS, PostgresStore, SqliteStore, StateStore
from tests.helpers import create_database


@pytest.fixture(params=["postgres", "sqlite"])
def make_store(request, tmp_path):
    """A factory: each call is another worker's store on the same storage."""
    if request.param == "postgres":
        _, dsn = create_database(request.getfixturevalue("postgres"), "state")
        return lambda: PostgresStore(dsn)
    return lambda: SqliteStore(tmp_path / "state.sqlite")


def test_concurrent_updates_from_several_workers_lose_nothing(make_store):
    stores = [make_store() for _ in range(3)]

    def add(store: StateStore, n: int) -> None:
        for i in range(10):
            store.update("docker-ledger", "web", lambda ledger: {"deploys": ledger["deploys"] + [f"{n}-{i}"]},
                          {"deploys": []})

    threads = [threading.Thread(target=add, args=(stores[n], n)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(stores[0].get("docker-ledger", "web")["deploys"]) == sorted(f"{n}-{i}" for n in range(3)
                                                                               for i in range(10))


async def test_an_exactly_once_section_calls_once_and_a_failed_one_calls_again(make_store):
    stores = [make_store() for _ in range(3)]
    calls: list[str] = []

    async def send(store: StateStore, key: str, fail: bool = False) -> str:
        async with store.once("slack", key) as once:
            if once.done:
                return once.result
            calls.append(key)
            await asyncio.sleep(0.2)  # the call takes a while: the others arrive meanwhile
            if fail:
                raise RuntimeError("Slack unreachable")
            once.record("posted")
        return once.recorded

    if isinstance(stores[0], SqliteStore):
        stores = stores[:1]  # SQLite is exactly-once within one worker process (documented)
    results = await asyncio.gather(*(send(stores[i % len(stores)], "web/declared") for i in range(6)))
    assert results == ["posted"] * 6 and calls == ["web/declared"]

    with pytest.raises(RuntimeError):
        await send(stores[0], "web/resolved", fail=True)
    assert await send(stores[-1], "web/resolved") == "posted"  # the failed claim was rolled back
    assert calls == ["web/declared", "web/resolved", "web/resolved"]


def test_several_workers_create_the_table_at_once(postgres):
    _, dsn = create_database(postgres, "state")
    errors: list[BaseException] = []

    def start() -> None:
        try:
            PostgresStore(dsn).put("flags", "all", {})
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_pruning_drops_old_idempotency_records_and_keeps_ledgers(make_store):
    store = make_store()
    store.put("slack", "web/old", True)
    store.put("docker-ledger", "web", {"deploys": ["a"]})
    time.sleep(0.3)
    store.put("slack", "web/new", True)
    assert store.prune(0.2) == 1
    assert store.get("slack", "web/old") is None and store.get("slack", "web/new") is True
    assert store.get("docker-ledger", "web") == {"deploys": ["a"]}
    assert "docker-ledger" not in IDEMPOTENCY_KINDS


def test_delivery_claims_have_one_winner_and_expire(make_store):
    first, second = make_store(), make_store()
    assert first.claim_fresh("webhook-delivery", ["a", "b"], 3600) == [True, True]
    assert second.claim_fresh("webhook-delivery", ["a", "c"], 3600) == [False, True]
    second.forget("webhook-delivery", ["a"])
    assert first.claim_fresh("webhook-delivery", ["a"], 3600) == [True]
    time.sleep(0.05)
    assert first.claim_fresh("webhook-delivery", ["b"], 0.01) == [True]


def test_an_upgrade_imports_the_json_ledgers_once(tmp_path):
    import json

    from activities.state import import_legacy_files
    from workflows.config import RollbackConfig

    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "web.json").write_text(json.dumps({"deploys": [{"image_id": "sha256:a", "bad": False}]}))
    (tmp_path / "vercel").mkdir()
    (tmp_path / "vercel" / "shop-rolled-away.json").write_text(json.dumps(["dpl_bad"]))
    store = SqliteStore(tmp_path / "state.sqlite")
    config = RollbackConfig(state_dir=str(tmp_path))
    assert import_legacy_files(config, store) == 2
    assert store.get("docker-ledger", "web")["deploys"][0]["image_id"] == "sha256:a"
    assert store.get("vercel-rolled-away", "shop") == ["dpl_bad"]
    store.put("vercel-rolled-away", "shop", ["dpl_bad", "dpl_newer"])
    assert import_legacy_files(config, store) == 0  # what the store has wins
    assert store.get("vercel-rolled-away", "shop") == ["dpl_bad", "dpl_newer"]


def test_env_values_live_in_the_shared_database_when_there_is_one(postgres, write_config, monkeypatch, tmp_path):
    """With `state_dsn_env`, what one worker stored (values behind a ref, the hashing key, what it
    set itself) another worker reads, and no value file is written on the worker's disk."""
    from activities.common import ConfigSource
    from activities.envstore import EnvStore

    _, dsn = create_database(postgres, "state")
    monkeypatch.setenv("TEST_STATE_DSN", dsn)
    config = write_config({"web": {"app": {"provider": "docker", "docker": {"container": "web"}},
                                   "health": {"url": "http://127.0.0.1:9/health"}}})
    path = Path(config._path)
    path.write_text(path.read_text() + "state_dsn_env: TEST_STATE_DSN\n")
    one, other = EnvStore(ConfigSource(path)), EnvStore(ConfigSource(path))
    ref = one.put("web", {"API_KEY": "canary-value-123"}, {"API_KEY": {"type": "sensitive"}})
    one.remember("web", {"API_KEY": "canary-value-123"})
    assert other.get("web", ref) == ({"API_KEY": "canary-value-123"}, {"API_KEY": {"type": "sensitive"}})
    assert other.hashes({"API_KEY": "x"}) == one.hashes({"API_KEY": "x"})  # one hashing key for all workers
    assert other.recall("web") == {"API_KEY": "canary-value-123"}
    state_dir = Path(ConfigSource(path).config.state_dir)
    assert not any(b"canary-value-123" in p.read_bytes() for p in state_dir.rglob("*") if p.is_file())
