"""Publishing with confirms: every publish waits for the broker's ack, so a
caller that gets no exception knows the message is safe on disk (persistent)
and routed (mandatory). Broker refusals become `Unavailable`.

Publishes go straight to the aiormq channel under aio-pika's (what
`Exchange.publish` does, without building an `aio_pika.Message` first: its
guarded attribute setters cost more than the frame itself)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from aio_pika.abc import AbstractChannel, AbstractRobustConnection, DeliveryMode
from aiormq import spec
from aiormq.exceptions import AMQPError, ChannelInvalidStateError, DeliveryError, PublishError

from shared.amqp import headers as h
from shared.errors import Unavailable
from shared.messages import CancelTask, TaskMessage, WorkerHeartbeat, _TaskEvent
from shared.topology import (
    CONTROL_EXCHANGE,
    DEAD_LETTER_EXCHANGE,
    EVENTS_EXCHANGE,
    RETRY_EXCHANGE,
    TASKS_EXCHANGE,
    RetryTier,
)

JSON = "application/json"


class EventPublisher(Protocol):
    """What a component that only reports progress needs."""

    async def event(self, event: _TaskEvent) -> None: ...


class Publisher:
    """Typed publishes onto the topology, over one confirm channel."""

    def __init__(self, channel: AbstractChannel, *, timeout: float) -> None:
        self._channel = channel
        self._exchanges = frozenset(
            ("", TASKS_EXCHANGE, RETRY_EXCHANGE, DEAD_LETTER_EXCHANGE, EVENTS_EXCHANGE, CONTROL_EXCHANGE)
        )
        self._timeout = timeout

    @classmethod
    async def open(cls, connection: AbstractRobustConnection, *, timeout: float = 10.0) -> Publisher:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        return cls(channel, timeout=timeout)

    async def close(self) -> None:
        await self._channel.close()

    # --- typed publishes ------------------------------------------------------

    async def task(self, message: TaskMessage, *, headers: Mapping[str, Any] | None = None) -> None:
        """Send a task to the queue of its current stage."""
        await self.publish(
            TASKS_EXCHANGE,
            message.stage,
            message.model_dump_json().encode(),
            headers=headers,
            priority=message.priority.amqp_priority,
            message_id=message.task_id,
        )

    async def retry(self, message: TaskMessage, tier: RetryTier, *, headers: Mapping[str, Any]) -> None:
        """Park a task in a delay queue; it returns to `message.stage` when the tier's TTL expires."""
        await self.publish(
            RETRY_EXCHANGE,
            message.stage,
            message.model_dump_json().encode(),
            headers={**headers, h.RETRY_TIER: tier.name},
            priority=message.priority.amqp_priority,
            message_id=message.task_id,
        )

    async def dead(
        self,
        body: bytes,
        *,
        headers: Mapping[str, Any],
        routing_key: str = "",
        properties: Mapping[str, Any] | None = None,
    ) -> None:
        """Send a message to `tm.dead` with the reason in its headers."""
        await self.publish(DEAD_LETTER_EXCHANGE, routing_key, body, headers=headers, **(properties or {}))

    async def event(self, event: _TaskEvent) -> None:
        await self.publish_event(event.routing_key, event.model_dump_json().encode(), message_id=event.event_id)

    async def publish_event(self, routing_key: str, body: bytes, *, message_id: str | None = None) -> None:
        """One event (v1) or a batch of one kind (v2, shared.amqp.event_batches)."""
        await self.publish(EVENTS_EXCHANGE, routing_key, body, message_id=message_id)

    async def heartbeat(self, heartbeat: WorkerHeartbeat) -> None:
        """Heartbeats are transient: nobody may be listening, and a lost one is replaced soon."""
        await self.publish(
            EVENTS_EXCHANGE,
            heartbeat.routing_key,
            heartbeat.model_dump_json().encode(),
            persistent=False,
            mandatory=False,
        )

    async def control(self, command: CancelTask) -> None:
        """A broadcast to whichever workers listen now (maybe none)."""
        await self.publish(
            CONTROL_EXCHANGE, "", command.model_dump_json().encode(), persistent=False, mandatory=False
        )

    async def reply(self, reply_to: str, correlation_id: str | None, body: bytes) -> None:
        """Answer an RPC-style request (e.g. on `tm.submit`); unroutable replies are dropped."""
        await self.publish(
            "", reply_to, body, correlation_id=correlation_id, persistent=False, mandatory=False
        )

    # --- the one raw publish ---------------------------------------------------

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        headers: Mapping[str, Any] | None = None,
        priority: int | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        persistent: bool = True,
        mandatory: bool = True,
    ) -> None:
        if exchange not in self._exchanges:
            raise KeyError(f"unknown exchange {exchange!r}")
        properties = spec.Basic.Properties(
            content_type=JSON,
            delivery_mode=(DeliveryMode.PERSISTENT if persistent else DeliveryMode.NOT_PERSISTENT).value,
            headers=dict(headers) if headers else None,
            priority=priority,
            message_id=message_id,
            correlation_id=correlation_id,
            reply_to=reply_to,
        )
        try:
            # Raises on a nack (DeliveryError) and, with on_return_raises, on a return (PublishError).
            channel = await self._channel.get_underlay_channel()
            await channel.basic_publish(
                body, exchange=exchange, routing_key=routing_key, properties=properties,
                mandatory=mandatory, timeout=self._timeout,
            )
        except PublishError as exc:
            raise Unavailable(f"no queue took the message for {exchange or 'default'}/{routing_key}") from exc
        except DeliveryError as exc:
            # A Basic.Nack: most often a full queue (overflow=reject-publish).
            raise Unavailable(f"the broker refused the message for {exchange or 'default'}/{routing_key} "
                              "(queue full or broker busy)", retry_after_seconds=5) from exc
        except TimeoutError as exc:
            raise Unavailable("the broker did not confirm the message in time") from exc
        except (AMQPError, ChannelInvalidStateError, ConnectionError, RuntimeError) as exc:
            raise Unavailable(f"the broker is unreachable ({type(exc).__name__})") from exc
