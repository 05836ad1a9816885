"""The AMQP topology, derived from one spec.

Every process declares it idempotently at start (`declare_topology`), so a
fresh vhost works with no operator step. Queue and exchange names are spelled
only here.

    tm.tasks   (direct)  --stage-->        tm.stage.<stage>   x-max-priority, max-length reject-publish
    tm.retry   (headers) --x-tm-retry-tier--> tm.retry.<tier>  TTL, dead-letters back to tm.tasks
    tm.dlx     (fanout)  -->                tm.dead
    tm.events  (topic)   --task.#-->        tm.dispatcher.events
    tm.control (fanout)  -->                one exclusive queue per worker
    (default)            --tm.submit-->     tm.submit          ingress for publishing services
    (default)            --tm.rpc.embed-->  tm.rpc.embed       query embeddings for search (RPC, embed workers answer)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, ExchangeType

from shared.amqp.headers import RETRY_TIER
from shared.status import MAX_AMQP_PRIORITY

TASKS_EXCHANGE = "tm.tasks"
RETRY_EXCHANGE = "tm.retry"
DEAD_LETTER_EXCHANGE = "tm.dlx"
EVENTS_EXCHANGE = "tm.events"
CONTROL_EXCHANGE = "tm.control"

SUBMIT_QUEUE = "tm.submit"
DEAD_QUEUE = "tm.dead"
DISPATCHER_EVENTS_QUEUE = "tm.dispatcher.events"
# Search queries are embedded by the embed workers (the api never loads a model).
EMBED_RPC_QUEUE = "tm.rpc.embed"
EMBED_RPC_TTL_MS = 30_000  # a request nobody took by then is dropped; the caller gave up long before
EMBED_RPC_MAX_LENGTH = 1000

EMBED_STAGE = "embed"

TASK_EVENTS_PATTERN = "task.#"
WORKER_EVENTS_PATTERN = "worker.#"


def stage_queue(stage: str) -> str:
    return f"tm.stage.{stage}"


@dataclass(frozen=True)
class RetryTier:
    name: str
    seconds: float

    @property
    def queue(self) -> str:
        return f"tm.retry.{self.name}"


# A retry waits in the tier closest to its computed backoff.
RETRY_TIERS: tuple[RetryTier, ...] = (
    RetryTier("1s", 1),
    RetryTier("5s", 5),
    RetryTier("30s", 30),
    RetryTier("2m", 120),
    RetryTier("10m", 600),
    RetryTier("1h", 3600),
)


@dataclass(frozen=True)
class Exchange:
    name: str
    type: ExchangeType


@dataclass(frozen=True)
class Binding:
    exchange: str
    routing_key: str = ""
    arguments: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Queue:
    name: str
    arguments: tuple[tuple[str, Any], ...] = ()
    bindings: tuple[Binding, ...] = ()


@dataclass(frozen=True)
class Topology:
    stages: tuple[str, ...]
    stage_queue_max_length: int = 1_000_000
    exchanges: tuple[Exchange, ...] = field(init=False)
    queues: tuple[Queue, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "exchanges", _exchanges())
        object.__setattr__(self, "queues", tuple(self._queues()))

    def _queues(self) -> Iterable[Queue]:
        for stage in self.stages:
            yield Queue(
                stage_queue(stage),
                arguments=(
                    ("x-max-priority", MAX_AMQP_PRIORITY),
                    ("x-max-length", self.stage_queue_max_length),
                    ("x-overflow", "reject-publish"),
                    ("x-dead-letter-exchange", DEAD_LETTER_EXCHANGE),
                ),
                bindings=(Binding(TASKS_EXCHANGE, stage),),
            )
        for tier in RETRY_TIERS:
            # No x-dead-letter-routing-key: an expired retry keeps its routing
            # key (the stage) and so returns to the stage it failed in.
            yield Queue(
                tier.queue,
                arguments=(
                    ("x-message-ttl", int(tier.seconds * 1000)),
                    ("x-dead-letter-exchange", TASKS_EXCHANGE),
                ),
                bindings=(
                    Binding(RETRY_EXCHANGE, arguments=(("x-match", "all"), (RETRY_TIER, tier.name))),
                ),
            )
        yield Queue(DEAD_QUEUE, arguments=(("x-queue-mode", "lazy"),), bindings=(Binding(DEAD_LETTER_EXCHANGE),))
        yield Queue(
            SUBMIT_QUEUE,
            arguments=(
                ("x-max-length", self.stage_queue_max_length),
                ("x-overflow", "reject-publish"),
                ("x-dead-letter-exchange", DEAD_LETTER_EXCHANGE),
            ),
        )
        if EMBED_STAGE in self.stages:
            yield Queue(
                EMBED_RPC_QUEUE,
                arguments=(
                    ("x-message-ttl", EMBED_RPC_TTL_MS),
                    ("x-max-length", EMBED_RPC_MAX_LENGTH),
                    ("x-overflow", "reject-publish"),
                ),
            )
        yield Queue(
            DISPATCHER_EVENTS_QUEUE,
            arguments=(("x-dead-letter-exchange", DEAD_LETTER_EXCHANGE),),
            bindings=(Binding(EVENTS_EXCHANGE, TASK_EVENTS_PATTERN),),
        )

    def queue(self, name: str) -> Queue:
        for queue in self.queues:
            if queue.name == name:
                return queue
        raise KeyError(name)


def _exchanges() -> tuple[Exchange, ...]:
    return (
        Exchange(TASKS_EXCHANGE, ExchangeType.DIRECT),
        Exchange(RETRY_EXCHANGE, ExchangeType.HEADERS),
        Exchange(DEAD_LETTER_EXCHANGE, ExchangeType.FANOUT),
        Exchange(EVENTS_EXCHANGE, ExchangeType.TOPIC),
        Exchange(CONTROL_EXCHANGE, ExchangeType.FANOUT),
    )


async def declare_topology(channel: AbstractChannel, topology: Topology) -> None:
    """Declare every exchange, queue and binding; safe to run any number of times."""
    exchanges = {}
    for spec in topology.exchanges:
        exchanges[spec.name] = await channel.declare_exchange(spec.name, spec.type, durable=True)
    for queue_spec in topology.queues:
        queue = await channel.declare_queue(queue_spec.name, durable=True, arguments=dict(queue_spec.arguments))
        for binding in queue_spec.bindings:
            await queue.bind(
                exchanges[binding.exchange],
                routing_key=binding.routing_key,
                arguments=dict(binding.arguments) or None,
            )


async def verify_topology(channel: AbstractChannel, topology: Topology) -> dict[str, int]:
    """Passively declare every queue; answers ready-message counts by queue name.

    Raises aio-pika's ChannelClosed when something is missing."""
    depths = {}
    for spec in topology.exchanges:
        await channel.get_exchange(spec.name, ensure=True)
    for queue_spec in topology.queues:
        queue = await channel.declare_queue(queue_spec.name, passive=True)
        depths[queue_spec.name] = queue.declaration_result.message_count or 0
    return depths


async def declare_exclusive_queue(
    channel: AbstractChannel, exchange: str, routing_key: str = ""
) -> aio_pika.abc.AbstractQueue:
    """A server-named queue that lives as long as this connection (control, live views)."""
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(exchange, routing_key=routing_key)
    return queue
