"""Process-level helpers shared by the three entry points."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable


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
