"""The api's dependencies, set up and torn down with the app (`cleanup_ctx`)
and reached through typed keys."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
from aio_pika.abc import AbstractRobustConnection
from aiohttp import web
from loguru import logger
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.admission import MAX_OPEN_TRANSACTIONS, Admission
from services.api.auth import AUTHENTICATOR, Authenticator
from services.api.dead_letters import DeadLetterQueue
from services.api.event_feed import EventFeed
from services.api.fair_window import FairWindow
from services.api.query_embedder import QueryEmbedder
from services.api.queue_monitor import QueueMonitor
from services.api.queue_stats import QueueStats
from services.api.rate_limit import TokenBuckets
from services.api.submission_checks import SubmissionChecks
from services.api.upload_quota import UploadLimits, UploadQuota
from services.api.worker_registry import WorkerRegistry
from services.api.workflow_intake import WorkflowIntake
from shared.amqp.connection import connect
from shared.amqp.publisher import Publisher
from shared.amqp.readiness import BrokerReadiness
from shared.db.engine import create_engine
from shared.db.pool import create_pool
from shared.runtime import bounded
from shared.security.api_key_store import ApiKeyStore
from shared.security.callback_policy import CallbackPolicy
from shared.settings import Settings
from shared.task_request import RequestLimits
from shared.task_types import TaskTypeRegistry
from shared.topology import Topology, setup_topology
from shared.uploads import UploadStore

SETTINGS = web.AppKey("settings", Settings)
REGISTRY = web.AppKey("registry", TaskTypeRegistry)
ENGINE = web.AppKey("engine", AsyncEngine)
CONNECTION = web.AppKey("amqp_connection", AbstractRobustConnection)
PUBLISHER = web.AppKey("publisher", Publisher)
ADMISSION = web.AppKey("admission", Admission)
ADMISSION_POOL = web.AppKey("admission_pool", asyncpg.Pool)
LIMITS = web.AppKey("request_limits", RequestLimits)
DEAD_LETTERS = web.AppKey("dead_letters", DeadLetterQueue)
TOPOLOGY = web.AppKey("topology", Topology)
BROKER_READINESS = web.AppKey("broker_readiness", BrokerReadiness)
QUEUE_MONITOR = web.AppKey("queue_monitor", QueueMonitor)
QUEUE_STATS = web.AppKey("queue_stats", QueueStats)
WORKER_REGISTRY = web.AppKey("worker_registry", WorkerRegistry)
CHECKS = web.AppKey("submission_checks", SubmissionChecks)
WORKFLOW_INTAKE = web.AppKey("workflow_intake", WorkflowIntake)
UPLOAD_STORE = web.AppKey("upload_store", UploadStore)
UPLOAD_QUOTA = web.AppKey("upload_quota", UploadQuota)
EVENT_FEED = web.AppKey("event_feed", EventFeed)


class StartupRefused(RuntimeError):
    """Configuration the api will not run with (see shared/security/startup_checks.py)."""
QUERY_EMBEDDER = web.AppKey("query_embedder", QueryEmbedder)


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    app[ENGINE] = create_engine(settings.postgres)
    # Admission's plain path (decision 0181); lazy, so the api starts while the database is down.
    app[ADMISSION_POOL] = await create_pool(settings.postgres, max_size=MAX_OPEN_TRANSACTIONS, min_size=0,
                                            name="taskmgr-admission")
    logger.info("task state in PostgreSQL at {}", settings.postgres.describe())
    store = ApiKeyStore(app[ENGINE])
    await _check_key_source(settings, store)
    app[AUTHENTICATOR] = Authenticator(
        store,
        required=settings.auth_required,
        cache_seconds=settings.auth.api_key_cache_seconds,
        metrics_token=settings.auth.metrics_token.get_secret_value() if settings.auth.metrics_token else None,
        lookups=TokenBuckets(settings.auth.auth_failure_rate_per_second, settings.auth.auth_failure_burst),
    )
    policy = CallbackPolicy.from_settings(settings.callbacks, settings.service.environment)
    app[CHECKS] = SubmissionChecks(app[ENGINE], policy, settings.files.upload_roots,
                                    settings.files.upload_store_root)
    app[UPLOAD_STORE] = UploadStore(settings.files.upload_store_root)
    files = settings.files
    app[UPLOAD_QUOTA] = UploadQuota(app[ENGINE], files.upload_store_root, UploadLimits(
        files.upload_quota_files, files.upload_quota_bytes, files.upload_min_free_bytes))
    events = settings.events
    app[EVENT_FEED] = EventFeed(app[ENGINE], poll_seconds=events.poll_seconds, buffer=events.buffer,
                                max_streams=events.max_streams)
    yield
    await app[EVENT_FEED].close()
    await bounded(app[ADMISSION_POOL].close(), "closing admission's database connections")
    await bounded(app[ENGINE].dispose(), "closing database connections")


async def broker_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    topology = Topology(
        app[REGISTRY].stages(), settings.amqp.stage_queue_max_length, declare=settings.amqp.declare_topology
    )
    connection = await connect(settings.amqp, name="api")
    await setup_topology(connection, topology)
    app[TOPOLOGY] = topology
    app[CONNECTION] = connection
    app[BROKER_READINESS] = BrokerReadiness(connection)
    app[PUBLISHER] = await Publisher.open(connection, timeout=5.0)
    fair = (FairWindow(connection, app[ADMISSION_POOL], window=settings.api.fair_window)
            if settings.api.fair_scheduling else None)
    app[ADMISSION] = Admission(
        app[ENGINE],
        app[PUBLISHER],
        max_in_flight=settings.api.max_concurrent_tasks,
        wait_seconds=settings.api.admission_wait_seconds,
        pool=app[ADMISSION_POOL],
        fair=fair,
    )
    app[WORKFLOW_INTAKE] = WorkflowIntake(app[ENGINE], app[PUBLISHER], app[REGISTRY], app[LIMITS], app[CHECKS])
    app[DEAD_LETTERS] = DeadLetterQueue(connection, app[PUBLISHER], app[ENGINE])
    app[QUERY_EMBEDDER] = QueryEmbedder(connection, timeout_seconds=settings.search.embed_timeout_seconds)
    await app[QUERY_EMBEDDER].start()
    yield
    await bounded(app[QUERY_EMBEDDER].close(), "closing the query embedder")
    if fair is not None:
        await bounded(fair.stop(), "stopping the fair window's refresh")
    await bounded(connection.close(), "closing the broker connection")


async def check_database(app: web.Application) -> None:
    async with app[ENGINE].connect() as conn:
        await conn.execute(text("SELECT 1"))


async def check_broker(app: web.Application) -> None:
    await app[BROKER_READINESS]()


async def _check_key_source(settings: Settings, store: ApiKeyStore) -> None:
    """Production with auth (always, see startup checks) needs a key to exist:
    otherwise nobody could call it, and that is a misconfiguration."""
    if not settings.auth_required:
        logger.warning("AUTH_REQUIRED is off: every caller is trusted (development only; the api listens on {})",
                       settings.service.http_host)
        return
    active = await store.count_active()
    if active:
        logger.info("API keys required; {} active key(s)", active)
    elif settings.service.is_production:
        raise StartupRefused("AUTH_REQUIRED in production but no active API key exists; "
                             "create one with `taskmgr keys create --name NAME --scopes tasks:read,tasks:write`")
    else:
        logger.warning("AUTH_REQUIRED is on but no active API key exists: every call will get 401")
