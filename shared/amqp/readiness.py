"""Is the broker usable right now? The readiness check every process runs.

The connection's own state only changes when the socket fails or a heartbeat
is missed (up to AMQP_HEARTBEAT seconds); a broker that stopped answering
would look healthy until then. So the probe also makes one round trip: a
passive declare of `tm.tasks` on a channel kept for the purpose, which fails
fast when the broker is gone and also when the topology is missing.
"""

from __future__ import annotations

import asyncio
import contextlib

from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from shared.topology import TASKS_EXCHANGE


class BrokerReadiness:
    def __init__(self, connection: AbstractRobustConnection) -> None:
        self._connection = connection
        self._channel: AbstractChannel | None = None
        self._closing: set[asyncio.Task[None]] = set()

    async def __call__(self) -> None:
        """Returns when the broker answered; raises otherwise (run under a timeout)."""
        if self._connection.is_closed or not self._connection.connected.is_set():
            raise ConnectionError("not connected to RabbitMQ")
        try:
            if self._channel is None or self._channel.is_closed:
                self._channel = await self._connection.channel(publisher_confirms=False)
            await self._channel.get_exchange(TASKS_EXCHANGE, ensure=True)
        except BaseException:
            # Start from a fresh channel next time (this one may be half-open or
            # closed by an error). Close it in the background: a broker that does
            # not answer would make the probe outlive its timeout.
            channel, self._channel = self._channel, None
            if channel is not None:
                task = asyncio.ensure_future(_close_quietly(channel))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            raise


async def _close_quietly(channel: AbstractChannel) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(channel.close(), 10)
