"""asyncpg pools, for the paths where SQLAlchemy adds nothing but cost.

The pipeline moves bulk data (COPY of blocks and chunks, vectors as pgvector
text), and the api's admission of plain tasks runs one fixed INSERT per group
commit (decision 0181): both talk asyncpg directly. Everything else goes
through the SQLAlchemy engine (shared/db/engine.py).
"""

from __future__ import annotations

import asyncpg

from shared.db.local_server import connect_kwargs
from shared.db.writable_server import WritableServer
from shared.settings import PostgresSettings


async def create_pool(
    settings: PostgresSettings, *, max_size: int = 10, min_size: int = 1, name: str = "taskmgr"
) -> asyncpg.Pool:
    """`min_size=0` connects on first use (a process that must start while the database is down)."""
    kwargs = connect_kwargs(settings)
    if len(settings.addresses()) > 1:  # a primary and standbys: one server at a time
        kwargs["connect"] = WritableServer(settings).connect
    return await asyncpg.create_pool(
        **kwargs, min_size=min_size, max_size=max_size, timeout=10, command_timeout=None,
        server_settings={"application_name": name},
    )
