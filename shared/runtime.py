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
    database unreachable, closing waits forever for a reconnect otherwise."""
    try:
        await asyncio.wait_for(step, seconds)
    except TimeoutError:
        logger.warning("{} did not finish within {}s; going on", what, seconds)
    except Exception as exc:  # noqa: BLE001 - shutting down anyway
        logger.debug("{} failed during shutdown: {}", what, exc)
