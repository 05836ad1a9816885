"""Wiring of the dispatcher process: event batches into PostgreSQL, callbacks
out over HTTP, /metrics and /health; graceful shutdown on SIGTERM."""

from __future__ import annotations

import asyncio

import aiohttp
from loguru import logger
from sqlalchemy import text

from services.dispatcher.callbacks import CallbackSender
from services.dispatcher.event_consumer import EventConsumer
from services.dispatcher.event_log import EventLog
from services.dispatcher.periodic import ScheduleFiring
from services.dispatcher.reconciler import LostMessageReconciler
from services.dispatcher.releases import ReleasePublisher
from services.dispatcher.retention import RetentionSweep
from services.dispatcher.rpc import DispatcherRpc
from services.dispatcher.scheduler import DelayedRelease
from services.dispatcher.state_writer import TaskStateWriter
from services.dispatcher.workflow_callbacks import WorkflowCallbackSender
from shared.amqp.connection import connect
from shared.amqp.publisher import Publisher
from shared.amqp.readiness import BrokerReadiness
from shared.db.engine import create_engine
from shared.health import start_ops_server
from shared.runtime import bounded, on_shutdown_signal
from shared.security.callback_policy import CallbackPolicy, guarded_connector
from shared.settings import Settings
from shared.task_types import TaskTypeRegistry, default_registry
from shared.topology import Topology, setup_topology


async def run_dispatcher(settings: Settings, registry: TaskTypeRegistry | None = None) -> None:
    registry = registry or default_registry(demo=settings.service.demo_task_types_enabled)
    engine = create_engine(settings.postgres)
    logger.info("task state in PostgreSQL at {}", settings.postgres.describe())
    topology = Topology(
        registry.stages(), settings.amqp.stage_queue_max_length, declare=settings.amqp.declare_topology
    )
    connection = await connect(settings.amqp, name="dispatcher")
    await setup_topology(connection, topology)
    publisher = await Publisher.open(connection)
    policy = CallbackPolicy.from_settings(settings.callbacks, settings.service.environment)
    # trust_env off: no proxy from the environment; the guarded connector is the only way out.
    session = aiohttp.ClientSession(connector=guarded_connector(policy), trust_env=False)

    callbacks = CallbackSender(engine, settings.callbacks, session, policy)
    workflow_callbacks = WorkflowCallbackSender(engine, settings.callbacks, session, policy)
    releases = ReleasePublisher(engine, publisher, context_max_bytes=settings.dispatcher.dependency_context_max_bytes)
    event_log = EventLog(engine, retention_seconds=settings.events.log_retention_seconds)
    consumer = EventConsumer(
        TaskStateWriter(engine, default_callback_url=settings.callbacks.kb_callback_url, on_released=releases.wake,
                        on_workflows_closed=workflow_callbacks.wake),
        publisher,
        settings.dispatcher,
        on_callbacks_queued=callbacks.wake,
        event_log=event_log,
    )

    async def database_ready() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    ops = await start_ops_server(
        settings.service.http_host,
        settings.service.metrics_port,
        {"database": database_ready, "broker": BrokerReadiness(connection)},
        process="dispatcher",
        metrics_token=settings.auth.metrics_token.get_secret_value() if settings.auth.metrics_token else None,
    )
    stop = asyncio.Event()
    on_shutdown_signal(stop.set)

    rpc = DispatcherRpc(engine, publisher)
    await consumer.start(connection, topology)
    await rpc.start(connection, topology)
    callbacks.start()
    workflow_callbacks.start()
    releases.start()
    event_log.start()
    delayed = DelayedRelease(engine, publisher, poll_seconds=settings.dispatcher.scheduler_poll_seconds)
    delayed.start()
    periodic = ScheduleFiring(engine, publisher, poll_seconds=settings.dispatcher.scheduler_poll_seconds,
                              grace_seconds=settings.dispatcher.schedule_misfire_grace_seconds)
    periodic.start()
    reconciler = LostMessageReconciler(engine, connection, publisher, registry, settings.dispatcher)
    reconciler.start()
    retention = RetentionSweep(engine, settings.retention, settings.files)
    retention.start()
    logger.info("dispatcher ready")
    await stop.wait()

    logger.info("dispatcher shutting down")
    await delayed.stop()
    await periodic.stop()
    await reconciler.stop()
    await retention.stop()
    await consumer.stop()
    await rpc.stop()
    await callbacks.stop()
    await workflow_callbacks.stop()
    await releases.stop()
    await event_log.stop()
    await session.close()
    if ops is not None:
        await ops.cleanup()
    await bounded(connection.close(), "closing the broker connection")
    await bounded(engine.dispose(), "closing database connections")
    logger.info("dispatcher stopped")
