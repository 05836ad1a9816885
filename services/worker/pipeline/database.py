"""One asyncpg pool per pipeline worker process.

The pipeline moves bulk data (COPY of blocks and chunks, vectors as pgvector
text) where SQLAlchemy adds nothing, so its stages talk asyncpg directly.
"""

from __future__ import annotations

import asyncpg

from shared.db.local_server import connect_kwargs
from shared.settings import PostgresSettings


async def create_pool(settings: PostgresSettings, *, max_size: int = 10) -> asyncpg.Pool:
    kwargs = connect_kwargs(settings)
    return await asyncpg.create_pool(
        **kwargs, min_size=1, max_size=max_size, timeout=10, command_timeout=None,
        server_settings={"application_name": "taskmgr-pipeline"},
    )
