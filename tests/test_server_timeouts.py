"""The api does not wait for ever on a slow client: a connection still sending
its headers, or idle between requests, is closed after API_KEEPALIVE_TIMEOUT;
a body that does not arrive within API_BODY_TIMEOUT is answered 408."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import aiohttp

from tests.conftest import FleetFactory
from tests.support.fleet import Fleet

# Only a guard so a broken fix fails instead of hanging; the server's limits are 1 s.
GUARD_SECONDS = 60


async def _connect(fleet: Fleet) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    url = urlsplit(fleet.api_url)
    return await asyncio.open_connection(url.hostname, url.port)


async def test_slow_headers_idle_connections_and_slow_bodies_are_cut_off(
    fleet_factory: FleetFactory, http: aiohttp.ClientSession
) -> None:
    def api_with_short_limits(fleet: Fleet) -> None:
        fleet.add_api(API_KEEPALIVE_TIMEOUT="1", API_BODY_TIMEOUT="1")

    fleet = await fleet_factory(api_with_short_limits)

    # Slowloris: headers that never end. The server closes the socket.
    reader, writer = await _connect(fleet)
    writer.write(b"POST /api/v1/tasks HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), GUARD_SECONDS) == b""
    writer.close()

    # Idle keep-alive after a complete request: closed as well.
    reader, writer = await _connect(fleet)
    writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), GUARD_SECONDS)  # the answer, then EOF
    assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
    writer.close()

    # A body that stops half-way: 408 naming the setting.
    reader, writer = await _connect(fleet)
    writer.write(b"POST /api/v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{\"task_type\":")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), GUARD_SECONDS)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"API_BODY_TIMEOUT" in body
    writer.close()

    # A normal request is unaffected.
    async with http.get(f"{fleet.api_url}/health/live") as response:
        assert response.status == 200
