"""The api's dependencies, set up and torn down with the app (`cleanup_ctx`)
and reached through typed keys."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aio_pika.abc import AbstractRobustConnection
from aiohttp import web
from loguru import logger
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.admission import Admission
from services.api.query_embedder import QueryEmbedder
from shared.amqp.connection import connect
from shared.amqp.publisher import Publisher
from shared.db.engine import create_engine
from shared.settings import Settings
from shared.task_request import RequestLimits
from shared.task_types import TaskTypeRegistry
from shared.topology import Topology, declare_topology

SETTINGS = web.AppKey("settings", Settings)
REGISTRY = web.AppKey("registry", TaskTypeRegistry)
ENGINE = web.AppKey("engine", AsyncEngine)
CONNECTION = web.AppKey("amqp_connection", AbstractRobustConnection)
PUBLISHER = web.AppKey("publisher", Publisher)
ADMISSION = web.AppKey("admission", Admission)
LIMITS = web.AppKey("request_limits", RequestLimits)
QUERY_EMBEDDER = web.AppKey("query_embedder", QueryEmbedder)


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[ENGINE] = create_engine(settings.postgres)
    logger.info("task state in PostgreSQL at {}", settings.postgres.describe())
    yield
    await app[ENGINE].dispose()


async def broker_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    connection = await connect(settings.amqp, name="api")
    channel = await connection.channel()
    await declare_topology(channel, Topology(app[REGISTRY].stages(), settings.amqp.stage_queue_max_length))
    await channel.close()
    app[CONNECTION] = connection
    app[PUBLISHER] = await Publisher.open(connection, timeout=5.0)
    app[ADMISSION] = Admission(
        app[ENGINE],
        app[PUBLISHER],
        max_in_flight=settings.api.max_concurrent_tasks,
        wait_seconds=settings.api.admission_wait_seconds,
    )
    app[QUERY_EMBEDDER] = QueryEmbedder(connection, timeout_seconds=settings.search.embed_timeout_seconds)
    await app[QUERY_EMBEDDER].start()
    yield
    await app[QUERY_EMBEDDER].close()
    await connection.close()


async def check_database(app: web.Application) -> None:
    async with app[ENGINE].connect() as conn:
        await conn.execute(text("SELECT 1"))


async def check_broker(app: web.Application) -> None:
    connection = app[CONNECTION]
    if connection.is_closed or not connection.connected.is_set():
        raise ConnectionError("not connected to RabbitMQ")
