"""How much one tenant may keep in the upload store, and how full its disk may get.

Before a byte is read, an upload takes a reservation: the tenant's stored
uploads (from the `uploads` table) plus its uploads in flight in this process
must stay under UPLOAD_QUOTA_FILES and UPLOAD_QUOTA_BYTES (413 beyond), and the
store's disk must keep UPLOAD_MIN_FREE_BYTES free (507 below). What is left of
the byte quota caps the stream, so a client that sent no Content-Length is
stopped at the quota too. Ten parallel uploads see each other's reservations;
several api processes each count only their own in-flight uploads, which can
overshoot the quota by what is in flight, never by what is kept.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db.models import uploads
from shared.errors import InsufficientStorage, PayloadTooLarge


@dataclass(frozen=True)
class UploadLimits:
    max_files: int
    max_bytes: int
    min_free_bytes: int


@dataclass
class _InFlight:
    files: int = 0
    bytes: int = 0


class UploadQuota:
    def __init__(self, engine: AsyncEngine, store_root: Path, limits: UploadLimits) -> None:
        self._engine = engine
        self._store_root = store_root
        self._limits = limits
        self._in_flight: dict[str, _InFlight] = {}
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def reserve(self, owner: str, declared_bytes: int | None, max_file_bytes: int) -> AsyncIterator[int]:
        """Hold a place for one upload by `owner`; yields the most bytes it may
        stream (MAX_FILE_BYTES or what is left of the quota, the smaller)."""
        limits = self._limits
        async with self._lock:  # the check and the reservation together, or two uploads pass one check
            # In flight read before the query: an upload that commits and ends during the query is then
            # counted twice at worst, never missed. (One small entry per tenant, kept.)
            flight = self._in_flight.setdefault(owner, _InFlight())
            flying_files, flying_bytes = flight.files, flight.bytes
            files, used = await self._stored(owner)
            files += flying_files
            if files >= limits.max_files:
                raise PayloadTooLarge(f"upload quota reached: this tenant keeps {files} uploads; "
                                      f"the limit is {limits.max_files} (UPLOAD_QUOTA_FILES). Uploads are "
                                      "deleted after their tasks end; retry then")
            left = limits.max_bytes - used - flying_bytes
            expected = min(declared_bytes or 1, max_file_bytes)
            if left < expected:
                raise PayloadTooLarge(self.quota_message(max(left, 0)))
            self.check_free_space(expected)
            allowed = min(max_file_bytes, left)
            # A declared length is exact (the server stops the body there); without one, all that is left.
            held = expected if declared_bytes else allowed
            flight.files += 1
            flight.bytes += held
        try:
            yield allowed
        finally:
            flight.files -= 1
            flight.bytes -= held

    def quota_message(self, left: int) -> str:
        return (f"upload quota reached: {left} bytes are left of this tenant's {self._limits.max_bytes} "
                "(UPLOAD_QUOTA_BYTES). Uploads are deleted after their tasks end; retry then")

    def check_free_space(self, incoming: int = 0) -> None:
        """507 when keeping `incoming` more bytes would leave less than the floor free."""
        free = shutil.disk_usage(self._store_root).free
        if free - incoming < self._limits.min_free_bytes:
            raise InsufficientStorage("the upload store is nearly full (below UPLOAD_MIN_FREE_BYTES free); "
                                      "retry later")

    async def _stored(self, owner: str) -> tuple[int, int]:
        async with self._engine.connect() as conn:
            row = (await conn.execute(
                select(func.count(), func.coalesce(func.sum(uploads.c.size_bytes), 0))
                .where(uploads.c.created_by == owner)
            )).one()
        return int(row[0]), int(row[1])
