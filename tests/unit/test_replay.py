"""The replay store: a retried delivery is a replay, across a restart, until its record expires."""

from __future__ import annotations

import asyncio
import time

from starter.replay import ReplayStore

DAY = 24 * 3600


def test_claims_survive_a_restart_and_expire(tmp_path):
    path = tmp_path / "webhook" / "deliveries.sqlite"
    store = ReplayStore(path)
    assert store.claim(["a", "b"], DAY) == [True, True]
    assert store.claim(["a", "c"], DAY) == [False, True]
    store.close()
    restarted = ReplayStore(path)
    assert restarted.claim(["a", "b", "c", "d"], DAY) == [False, False, False, True]
    restarted.forget(["a"])
    assert restarted.claim(["a"], DAY) == [True]
    time.sleep(0.05)
    assert restarted.claim(["b"], ttl_seconds=0.01) == [True]  # expired: new again
    assert restarted.claim(["b"], ttl_seconds=0.01) == [False]


async def test_concurrent_claims_of_one_key_have_one_winner(tmp_path):
    path = tmp_path / "deliveries.sqlite"
    stores = [ReplayStore(path) for _ in range(4)]  # several receivers sharing the file

    async def claim(store: ReplayStore) -> bool:
        return (await asyncio.to_thread(store.claim, ["same"], DAY))[0]

    results = await asyncio.gather(*(claim(stores[i % 4]) for i in range(40)))
    assert results.count(True) == 1
