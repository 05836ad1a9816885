"""The consumer base and the RPC helper (shared/amqp/consumer.py, shared/amqp/rpc.py)
against the real RabbitMQ: readiness follows a lost and restored connection
through aio-pika's public callbacks, and both RPC ends talk to each other."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import pytest
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from shared.amqp.consumer import QueueConsumer
from shared.amqp.rpc import RpcClient, RpcServer
from tests.support.environment import TestEnvironment
from tests.support.eventually import eventually
from tests.support.tcp_proxy import TcpProxy


async def _server_named(channel: AbstractChannel) -> AbstractQueue:
    return await channel.declare_queue(exclusive=True, auto_delete=True)


@pytest.fixture
async def connection(environment: TestEnvironment) -> AsyncIterator[AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(environment.amqp_url)
    yield connection
    await connection.close()


async def test_readiness_follows_a_lost_connection_and_its_restored_consumer(environment: TestEnvironment) -> None:
    amqp = urlsplit(environment.amqp_url)
    proxy = TcpProxy(amqp.hostname or "127.0.0.1", amqp.port or 5672)
    await proxy.start()
    userinfo = amqp.netloc.rsplit("@", 1)[0] + "@" if "@" in amqp.netloc else ""
    via_proxy = urlunsplit((amqp.scheme, f"{userinfo}127.0.0.1:{proxy.port}", amqp.path, amqp.query, ""))
    connection = await aio_pika.connect_robust(via_proxy, reconnect_interval=0.2)
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_message(message: AbstractIncomingMessage) -> None:
        await received.put(message.body)

    consumer = QueueConsumer(on_message, what="a test queue", prefetch=1, no_ack=True)
    try:
        with pytest.raises(RuntimeError, match="not consuming a test queue"):
            await consumer.check_consuming()
        await consumer.start(connection, _server_named)
        await consumer.check_consuming()

        proxy.cut()

        async def unready() -> None:
            try:
                await consumer.check_consuming()
            except RuntimeError as exc:
                assert "not consuming a test queue" in str(exc)
                return
            raise AssertionError("still reported as consuming")

        await eventually(unready)
        proxy.restore()

        async def ready() -> None:
            try:
                await consumer.check_consuming()
            except RuntimeError as exc:
                raise AssertionError(str(exc)) from exc

        await eventually(ready)
        # Ready means consuming: a message sent now reaches the restored consumer.
        await consumer.channel.default_exchange.publish(aio_pika.Message(b"after"), routing_key=consumer.queue.name)
        assert await asyncio.wait_for(received.get(), 10) == b"after"

        await consumer.cancel()
        with pytest.raises(RuntimeError, match="shutting down"):
            await consumer.check_consuming()
        await consumer.close()
    finally:
        await connection.close()
        await proxy.stop()


async def test_an_rpc_client_gets_the_servers_answer_and_skips_what_it_cannot_parse(
    connection: AbstractRobustConnection,
) -> None:
    async def answer(message: AbstractIncomingMessage) -> bytes | None:
        if message.body == b"silence":
            return None
        return message.body.upper()

    server = RpcServer(answer, what="a test rpc queue", prefetch=2)
    await server.start(connection, _server_named)
    client = RpcClient(what="test replies")
    await client.start(connection)
    try:
        route = server.queue_name
        assert await client.call(route, b"hello", bytes.decode, timeout=10) == "HELLO"

        def refuse(body: bytes) -> str:
            raise ValueError("not what I asked for")

        with pytest.raises(TimeoutError):  # the malformed reply is ignored, not taken as the answer
            await client.call(route, b"anything", refuse, timeout=1)
        with pytest.raises(TimeoutError):  # no answer at all
            await client.call(route, b"silence", bytes.decode, timeout=1)
        # request(): the answer as a future, for a caller that stops waiting but still wants it.
        pending = await client.request(route, b"later", bytes.decode)
        assert await asyncio.wait_for(asyncio.shield(pending), 10) == "LATER"
    finally:
        await client.close()
        await server.stop()
