"""The api's share of upload retention: partial uploads it left in the store's
incoming folder (a client that went away mid-body) are removed after an hour.
Finished uploads are deleted by the dispatcher's retention sweep
(services/dispatcher/retention.py), with the task rows they are counted against."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from pathlib import Path

from loguru import logger

from services.api.upload_intake import INCOMING
from shared.runtime import stop_task

STALE_INCOMING_SECONDS = 3600


class IncomingSweeper:
    def __init__(self, root: Path, interval_seconds: float) -> None:
        self._incoming = root / INCOMING
        self._interval = interval_seconds
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="incoming-sweeper")

    async def stop(self) -> None:
        await stop_task(self._task, "the incoming-upload sweeper")

    def sweep(self) -> None:
        if not self._incoming.is_dir():
            return
        cutoff = time.time() - STALE_INCOMING_SECONDS
        for entry in self._incoming.iterdir():
            with contextlib.suppress(OSError):
                if entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry, ignore_errors=True)

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.sweep)
            except Exception as exc:  # noqa: BLE001 - try again next round
                logger.warning("incoming-upload sweep failed: {}", type(exc).__name__)
            await asyncio.sleep(self._interval)


def store_root_ready(root: Path) -> None:
    (root / INCOMING).mkdir(parents=True, exist_ok=True, mode=0o700)
