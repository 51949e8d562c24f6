"""Small helpers the tests share."""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

from workflows.models import RollbackStatus


async def assert_eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20, interval: float = 0.2,
                            message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout}s")
        await asyncio.sleep(interval)


async def wait_for_phase(handle, phase: str, timeout: float = 20) -> RollbackStatus:
    state: dict = {}

    async def reached() -> bool:
        state["s"] = await handle.query("status", result_type=RollbackStatus)
        return state["s"].phase.value == phase

    await assert_eventually(reached, timeout, message=f"phase {phase}")
    return state["s"]


def kinds(timeline) -> list[str]:
    return [event.kind.value for event in timeline]
