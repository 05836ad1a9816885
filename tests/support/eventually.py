"""Waiting for an assertion that becomes true once the fleet has caught up
(a scrape, a heartbeat, a queue draining)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 20, interval: float = 0.1) -> Any:
    """`check()`'s result once it stops raising AssertionError; its last
    AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(interval)
