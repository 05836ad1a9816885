"""A callback URL's query and user-info (where tokens live) never reach the
logs, and `last_error`, which the tenant reads, holds a short sanitised
excerpt rather than the raw bytes a target sent back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest_asyncio

from tests.support.api import ApiClient
from tests.support.callback_receiver import CallbackReceiver
from tests.support.eventually import eventually
from tests.support.fleet import Fleet

GARBAGE = b"HTTP/1.1 2\x01\x1b[31m00 OK token=LEAKED-FROM-TARGET " + b"A" * 600 + b"\r\n\r\n"


@pytest_asyncio.fixture(loop_scope="session")
async def garbage_target() -> AsyncIterator[int]:
    """A 'callback target' that answers every request with control bytes and a long bad status line."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(GARBAGE)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_callback_urls_are_logged_without_query_or_userinfo_and_errors_are_sanitised(
    api: ApiClient, fleet: Fleet, receiver: CallbackReceiver, garbage_target: int
) -> None:
    token = f"tok{uuid.uuid4().hex}"
    path = f"redact-{uuid.uuid4().hex[:6]}"
    delivered = await api.run({"task_type": "echo", "callback_url": f"{receiver.url(path)}?token={token}-ok"})
    await receiver.wait_for(path)
    await api.wait_for_callback(delivered["task_id"], "delivered")

    task = await api.run({"task_type": "echo",
                          "callback_url": f"http://127.0.0.1:{garbage_target}/hook?token={token}-bad"})

    async def failed_once() -> str:
        view = await api.get(task["task_id"])
        assert view["callback"]["last_error"], view["callback"]
        return str(view["callback"]["last_error"])

    last_error = await eventually(failed_once, timeout=30)
    assert token not in last_error
    assert len(last_error) <= 200 and all(" " <= c <= "~" for c in last_error), last_error
    assert token not in fleet.logs() and token not in fleet.process("dispatcher").log_tail(400)
