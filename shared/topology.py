"""The AMQP topology, derived from one spec.

Every process declares it idempotently at start (`declare_topology`), so a
fresh vhost works with no operator step. Queue and exchange names are spelled
only here.

    tm.tasks   (direct)  --stage-->        tm.stage.<stage>   x-max-priority, max-length reject-publish
    tm.retry   (headers) --tm-retry-tier--> tm.retry.<tier>   TTL, dead-letters back to tm.tasks
    tm.dlx     (fanout)  -->                tm.dead
    tm.events  (topic)   --task.#-->        tm.dispatcher.events
    tm.control (fanout)  -->                one exclusive queue per worker
    tm.submit  (fanout)  -->                tm.submit          ingress for publishing services
    (default)            --tm.submit-->     tm.submit          (the same queue, for trusted internal publishers)
    (default)            --tm.dispatcher.rpc--> questions to the dispatcher (which tasks are cancelled)
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
# Its own exchange so an external publisher can be given write on it alone: write
# on the default exchange would reach every queue by name (deploy/rabbitmq).
SUBMIT_EXCHANGE = "tm.submit"

SUBMIT_QUEUE = "tm.submit"
DEAD_QUEUE = "tm.dead"
DISPATCHER_EVENTS_QUEUE = "tm.dispatcher.events"
DISPATCHER_RPC_QUEUE = "tm.dispatcher.rpc"
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
    # False (AMQP_DECLARE_TOPOLOGY=false): this process only checks that the
    # topology exists, for users without `configure` permission.
    declare: bool = True
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
            bindings=(Binding(SUBMIT_EXCHANGE),),
        )
        # Questions expire unanswered after 10 s: the asker has moved on by then.
        yield Queue(DISPATCHER_RPC_QUEUE, arguments=(("x-message-ttl", 10_000),))
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
        Exchange(SUBMIT_EXCHANGE, ExchangeType.FANOUT),
    )


# Bindings earlier versions declared and that must not survive an upgrade: a
# headers-exchange binding on an x- header matches every message.
LEGACY_BINDINGS: tuple[tuple[str, Binding], ...] = tuple(
    (tier.queue, Binding(RETRY_EXCHANGE, arguments=(("x-match", "all"), ("x-tm-retry-tier", tier.name))))
    for tier in RETRY_TIERS
)


async def declare_topology(channel: AbstractChannel, topology: Topology) -> None:
    """Declare every exchange, queue and binding, and remove legacy bindings;
    safe to run any number of times."""
    exchanges = {}
    for spec in topology.exchanges:
        exchanges[spec.name] = await channel.declare_exchange(spec.name, spec.type, durable=True)
    queues = {}
    for queue_spec in topology.queues:
        queue = queues[queue_spec.name] = await channel.declare_queue(
            queue_spec.name, durable=True, arguments=dict(queue_spec.arguments)
        )
        for binding in queue_spec.bindings:
            await queue.bind(
                exchanges[binding.exchange],
                routing_key=binding.routing_key,
                arguments=dict(binding.arguments) or None,
            )
    for queue_name, binding in LEGACY_BINDINGS:
        await queues[queue_name].unbind(
            exchanges[binding.exchange], routing_key=binding.routing_key, arguments=dict(binding.arguments)
        )


async def declare_queue(channel: AbstractChannel, topology: Topology, name: str) -> aio_pika.abc.AbstractQueue:
    """Declare one queue of the spec for consuming. On a robust channel the queue
    is then re-declared (with the same arguments, or passively when this process
    does not own the topology) and its consumers restored after a reconnect; a
    queue got with `get_queue` would be forgotten."""
    spec = topology.queue(name)
    if not topology.declare:
        return await channel.declare_queue(spec.name, passive=True)
    return await channel.declare_queue(spec.name, durable=True, arguments=dict(spec.arguments))


async def setup_topology(connection: aio_pika.abc.AbstractRobustConnection, topology: Topology) -> None:
    """At start: declare the topology (or only verify it), and declare it again
    after every reconnect when this process owns it."""
    channel = await connection.channel()
    try:
        await prepare_topology(channel, topology, declare=topology.declare)
    finally:
        await channel.close()
    if topology.declare:
        redeclare_on_reconnect(connection, topology)


def redeclare_on_reconnect(connection: aio_pika.abc.AbstractRobustConnection, topology: Topology) -> None:
    """After a reconnect, declare everything again: a broker that lost its
    definitions (a new node, a wiped volume) gets them back."""

    async def redeclare(*_: object) -> None:
        channel = await connection.channel()
        try:
            await declare_topology(channel, topology)
        finally:
            await channel.close()

    connection.reconnect_callbacks.add(redeclare)


async def prepare_topology(channel: AbstractChannel, topology: Topology, *, declare: bool) -> None:
    """Declare the topology, or (AMQP_DECLARE_TOPOLOGY=false, least-privilege users
    without `configure` permission) only check that it exists: passive declares
    need no permission."""
    if declare:
        await declare_topology(channel, topology)
    else:
        await verify_topology(channel, topology)


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
