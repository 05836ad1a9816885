"""Process-level helpers shared by the three entry points."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger


def install_event_loop_policy() -> None:
    """uvloop where available: a cheaper event loop for a message-heavy process."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - not on every platform
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def on_shutdown_signal(callback: Callable[[], None]) -> None:
    """Call `callback` on SIGTERM or SIGINT (Ctrl-C)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, callback)


async def bounded(step: Awaitable[Any], what: str, seconds: float = 5.0) -> None:
    """A shutdown step that must not hang the exit: with the broker or the
    database unreachable, closing waits forever for a reconnect otherwise.

    Not `wait_for`: it waits for the cancelled step to finish, and a close that
    shields itself never does. The step is cancelled and left behind."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        logger.warning("{} did not finish within {}s; going on", what, seconds)
        return
    if not task.cancelled() and task.exception() is not None:
        logger.debug("{} failed during shutdown: {}", what, task.exception())


async def stop_task(task: asyncio.Task[Any] | None, what: str, seconds: float = 5.0) -> None:
    """Cancel a background task and wait for it, but not forever: a client
    library that swallows the cancellation while it reconnects would otherwise
    hold the exit."""
    if task is None or task.done():
        return
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        logger.warning("{} did not stop within {}s; going on", what, seconds)
