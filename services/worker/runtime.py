"""Wiring of one worker process: connection, topology, the stage consumer,
cancellations, heartbeats, /metrics and /health; graceful shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import socket

from loguru import logger

from services.worker.cancellation import CancellationRegistry
from services.worker.consumer import StageWorker
from services.worker.cpu import CpuPool
from services.worker.finished_tasks import FinishedRuns
from services.worker.hand_replay import HandReplayGate
from services.worker.heartbeat import Heartbeat
from services.worker.retry_policy import RetryPolicy
from services.worker.stages import StageResources, build_stage
from shared.amqp.connection import connect
from shared.amqp.publisher import Publisher
from shared.amqp.readiness import BrokerReadiness
from shared.health import start_ops_server
from shared.runtime import bounded, on_shutdown_signal
from shared.settings import Settings
from shared.task_files import TaskFiles
from shared.task_types import TaskTypeRegistry, default_registry
from shared.topology import Topology, setup_topology

# How long a starting worker waits to learn which tasks were cancelled meanwhile.
CANCEL_SYNC_WAIT_SECONDS = 2.0
# How long a worker waits for the dispatcher to claim a hand-moved dead letter's new
# run (the rpc queue drops questions after 10 s); unanswered, the message is requeued.
HAND_REPLAY_ANSWER_SECONDS = 10.0


async def run_worker(settings: Settings, stage: str, registry: TaskTypeRegistry | None = None) -> None:
    registry = registry or default_registry(demo=settings.service.demo_task_types_enabled)
    handler = build_stage(stage, settings, registry)
    worker_id = f"{stage}@{socket.gethostname()}:{os.getpid()}"

    topology = Topology(
        registry.stages(), settings.amqp.stage_queue_max_length, declare=settings.amqp.declare_topology
    )
    connection = await connect(settings.amqp, name=f"worker-{stage}")
    await setup_topology(connection, topology)
    publisher = await Publisher.open(connection)

    cpu = CpuPool(settings.worker.cpu_workers)
    cancellations = CancellationRegistry()
    await cancellations.listen(connection)
    finished = FinishedRuns()
    await finished.listen(connection)
    await asyncio.gather(cancellations.sync(connection, wait_seconds=CANCEL_SYNC_WAIT_SECONDS),
                         finished.sync(connection, wait_seconds=CANCEL_SYNC_WAIT_SECONDS))
    worker = StageWorker(
        stage=stage,
        handler=handler,
        publisher=publisher,
        cancellations=cancellations,
        retry_policy=RetryPolicy.from_settings(settings.retry),
        worker_settings=settings.worker,
        retry_settings=settings.retry,
        worker_id=worker_id,
        cpu=cpu,
        files=TaskFiles.from_settings(settings.files),
        hand_replays=HandReplayGate(connection, publisher, answer_seconds=HAND_REPLAY_ANSWER_SECONDS),
        finished=finished,
    )
    heartbeat = Heartbeat(worker, publisher, settings.worker.heartbeat_interval_seconds)

    ops = await start_ops_server(
        settings.service.http_host,
        settings.service.metrics_port,
        {"broker": BrokerReadiness(connection), "consumer": worker.check_consuming},
        process=worker_id,
        metrics_token=settings.auth.metrics_token.get_secret_value() if settings.auth.metrics_token else None,
    )
    stop = asyncio.Event()
    on_shutdown_signal(stop.set)

    if isinstance(handler, StageResources):
        await handler.start()
    await worker.start(connection, topology)
    heartbeat.start()
    logger.info("worker {} ready", worker_id)
    await stop.wait()

    logger.info("worker {} shutting down", worker_id)
    await worker.stop(settings.worker.shutdown_grace_seconds)
    await heartbeat.stop()
    if isinstance(handler, StageResources):
        await bounded(handler.close(), "releasing the stage's resources", 10)
    cpu.close()
    if ops is not None:
        await ops.cleanup()
    await bounded(connection.close(), "closing the broker connection")
    logger.info("worker {} stopped", worker_id)
