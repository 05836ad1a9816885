"""The async engine, one per process, built from settings."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from shared.db.local_server import connect_kwargs
from shared.db.writable_server import WritableServer
from shared.settings import PostgresSettings


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def create_engine(settings: PostgresSettings, *, database: str | None = None, pool_size: int | None = None) -> AsyncEngine:
    size = pool_size or settings.pool_size
    connect_args: dict[str, Any] = {"server_settings": {"application_name": "taskmgr"}, "timeout": 5}
    extra: dict[str, Any] = {}
    ssl_context = settings.ssl_context()
    if ssl_context is not None:
        connect_args["ssl"] = ssl_context
    if len(settings.addresses()) > 1:
        # A primary and standbys: connect one server at a time (the URL still lists them all,
        # for the dialect and for `taskmgr migrate`).
        server = WritableServer(settings)
        kwargs = {**connect_kwargs(settings, database), **connect_args}

        async def connect() -> asyncpg.Connection:
            return await server.connect(**kwargs)

        extra["async_creator"] = connect
    return create_async_engine(
        settings.sqlalchemy_url(database),
        pool_size=size,
        max_overflow=size,
        pool_recycle=1800,
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
        connect_args=connect_args,
        **extra,
    )
