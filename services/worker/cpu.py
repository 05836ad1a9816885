"""CPU-bound work off the event loop, in child processes that can be killed.

A thread cannot be stopped, so a parser stuck on a hostile PDF would keep
burning a core after its attempt timed out. Here each call runs in a pebble
process pool: a call that times out or is cancelled (task cancelled, worker
shutting down) terminates the child that runs it, and the pool replaces it.
The pool starts on first use, so workers that never need it pay nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
from collections.abc import Callable
from typing import Any, TypeVar

import pebble

T = TypeVar("T")


class CpuPool:
    def __init__(self, workers: int, *, preload: tuple[str, ...] = ()) -> None:
        self._workers = workers
        self._preload = preload
        self._pool: pebble.ProcessPool | None = None

    def _ensure(self) -> pebble.ProcessPool:
        if self._pool is None:
            # forkserver: children come from a clean process, not from one holding
            # an event loop and broker sockets.
            context = multiprocessing.get_context("forkserver")
            if self._preload:
                context.set_forkserver_preload(list(self._preload))
            self._pool = pebble.ProcessPool(max_workers=self._workers, context=context)
        return self._pool

    async def run(self, function: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
        """Run `function(*args)` in a child process. Raises TimeoutError after
        `timeout` seconds; cancelling the awaiting task kills the child."""
        future = self._ensure().schedule(function, args=args, timeout=timeout)
        try:
            return await asyncio.wrap_future(future)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"CPU-bound step exceeded {timeout:g}s and was stopped") from None
        finally:
            if not future.done():
                future.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.stop()
            self._pool.join(timeout=5)
            self._pool = None
