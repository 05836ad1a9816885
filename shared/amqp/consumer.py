"""One queue consumed on a channel of its own: the wiring every consumer shares.

Open a channel, set its prefetch, declare (or bind) the queue, consume; on
the way out cancel the consumer (no new deliveries, the ones held still
settle) and close the channel, each step bounded so a dead broker cannot hang
an exit. `check_consuming` is the readiness probe, from aio-pika's public
callbacks only: the channel's `close_callbacks` say the consumer is gone, the
robust channel's `reopen_callbacks` say it is back (aio-pika fires them after
it restored the channel's queues and their consumers).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from shared.runtime import bounded

Declare = Callable[[AbstractChannel], Awaitable[AbstractQueue]]
OnMessage = Callable[[AbstractIncomingMessage], Awaitable[Any]]


class QueueConsumer:
    def __init__(
        self, on_message: OnMessage, *, what: str, prefetch: int | None = None, no_ack: bool = False
    ) -> None:
        self._on_message = on_message
        self.what = what  # for logs and readiness: "tm.stage.default", "the event consumer"
        self._prefetch = prefetch
        self._no_ack = no_ack
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._consuming = False
        self._stopping = False

    @property
    def channel(self) -> AbstractChannel:
        assert self._channel is not None, "start() first"
        return self._channel

    @property
    def queue(self) -> AbstractQueue:
        assert self._queue is not None, "start() first"
        return self._queue

    async def start(self, connection: AbstractRobustConnection, declare: Declare) -> None:
        """Open a channel of its own, declare the queue with `declare`, consume."""
        await self.start_on(await connection.channel(), declare)

    async def start_on(self, channel: AbstractChannel, declare: Declare) -> None:
        """Consume on a channel the caller opened (and may share for other uses)."""
        self._channel = channel
        channel.close_callbacks.add(self._lost)
        if isinstance(channel, AbstractRobustChannel):
            channel.reopen_callbacks.add(self._restored)
        if self._prefetch is not None:
            await channel.set_qos(prefetch_count=self._prefetch)
        self._queue = await declare(channel)
        self._tag = await self._queue.consume(self._on_message, no_ack=self._no_ack)
        self._consuming = True

    async def cancel(self) -> None:
        """Take no more deliveries; those already held can still be acked."""
        self._stopping = True
        if self._queue is not None and self._tag is not None:
            await bounded(self._queue.cancel(self._tag), f"cancelling the consumer of {self.what}")

    async def close(self) -> None:
        """Close the channel (its unacked deliveries go back to the queue)."""
        self._stopping = True
        if self._channel is not None:
            await bounded(self._channel.close(), f"closing the channel of {self.what}")

    async def stop(self) -> None:
        await self.cancel()
        await self.close()

    async def check_consuming(self) -> None:
        """Readiness: deliveries from the queue reach this consumer."""
        if self._stopping:
            raise RuntimeError("shutting down: no longer consuming")
        if self._channel is None or self._channel.is_closed or not self._consuming:
            raise RuntimeError(f"not consuming {self.what}")

    def _lost(self, *_: Any) -> None:
        self._consuming = False

    def _restored(self, *_: Any) -> None:
        self._consuming = self._tag is not None


async def quietly(settle: Awaitable[Any]) -> None:
    """Ack or nack, ignoring failure: a failure means the channel is gone, and the
    broker requeues what the channel held on its own."""
    with contextlib.suppress(Exception):
        await settle
