"""Readiness follows the broker and the database, on every process.

Each process of a fleet reaches RabbitMQ and PostgreSQL through a TCP proxy
of the test's own; cutting the proxy makes the server unreachable for those
processes only (the shared servers keep running for everyone else)."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from tests.conftest import FleetFactory
from tests.support.api import ApiClient
from tests.support.fleet import Process
from tests.support.tcp_proxy import TcpProxy

WAIT_SECONDS = 30


async def _readiness(http: aiohttp.ClientSession, process: Process) -> tuple[int, dict]:  # type: ignore[type-arg]
    assert process.ready_url is not None
    try:
        async with http.get(process.ready_url, timeout=aiohttp.ClientTimeout(total=5)) as response:
            return response.status, await response.json()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise AssertionError(f"{process.name} did not answer its readiness probe: {exc!r}") from exc


async def _wait_until(http: aiohttp.ClientSession, process: Process, status: int) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        code, body = await _readiness(http, process)
        if code == status:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{process.name} readiness still {code} after {WAIT_SECONDS}s: {body}")
        await asyncio.sleep(0.2)


async def _live(http: aiohttp.ClientSession, process: Process) -> int:
    assert process.ready_url is not None
    async with http.get(process.ready_url.replace("/ready", "/live")) as response:
        return response.status


def _through(url: str, port: int) -> str:
    parts = urlsplit(url)
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit((parts.scheme, f"{userinfo}127.0.0.1:{port}", parts.path, parts.query, ""))


async def test_every_process_turns_unready_without_the_broker_and_ready_again_after(
    fleet_factory: FleetFactory, http: aiohttp.ClientSession
) -> None:
    fleet = await fleet_factory(lambda _: None, start=False)
    amqp = urlsplit(fleet.environment.amqp_url)
    proxy = TcpProxy(amqp.hostname or "127.0.0.1", amqp.port or 5672)
    await proxy.start()
    try:
        via_proxy = _through(fleet.environment.amqp_url, proxy.port)
        fleet.add_api(AMQP_URL=via_proxy)
        fleet.add_worker(AMQP_URL=via_proxy)
        fleet.add_dispatcher(AMQP_URL=via_proxy)
        await fleet.start()

        proxy.cut()
        for process in fleet.processes:
            body = await _wait_until(http, process, 503)
            assert body["checks"]["broker"]["ok"] is False, (process.name, body)
            assert await _live(http, process) == 200, f"{process.name} must stay live without the broker"

        proxy.restore()
        for process in fleet.processes:
            body = await _wait_until(http, process, 200)
            assert all(check["ok"] for check in body["checks"].values()), (process.name, body)
        # Ready means usable: a task goes through every process again.
        task = await ApiClient(fleet.api_url, http).run({"task_type": "echo", "payload": {"after": "outage"}})
        assert task["status"] == "completed", task
    finally:
        # Stop the processes while the proxy still runs on this loop, so their
        # graceful shutdown is not stalled by a proxy that cannot forward.
        await asyncio.to_thread(fleet.stop)
        await proxy.stop()


async def test_the_api_and_dispatcher_turn_unready_without_the_database_and_ready_again_after(
    fleet_factory: FleetFactory, http: aiohttp.ClientSession
) -> None:
    fleet = await fleet_factory(lambda _: None, start=False)
    postgres = fleet.environment.postgres
    proxy = TcpProxy(postgres.effective_host, postgres.effective_port)
    await proxy.start()
    try:
        via_proxy = {"POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": str(proxy.port)}
        api = fleet.add_api(**via_proxy)
        dispatcher = fleet.add_dispatcher(**via_proxy)
        worker = fleet.add_worker()
        await fleet.start()

        proxy.cut()
        for process in (api, dispatcher):
            body = await _wait_until(http, process, 503)
            assert body["checks"]["database"]["ok"] is False, (process.name, body)
            assert body["checks"]["broker"]["ok"] is True, (process.name, body)
        status, body = await _readiness(http, worker)
        assert status == 200, f"a worker does not depend on the database: {body}"

        proxy.restore()
        for process in (api, dispatcher):
            await _wait_until(http, process, 200)
        task = await ApiClient(fleet.api_url, http).run({"task_type": "echo"})
        assert task["status"] == "completed", task
    finally:
        # Stop the processes while the proxy still runs on this loop, so their
        # graceful shutdown is not stalled by a proxy that cannot forward.
        await asyncio.to_thread(fleet.stop)
        await proxy.stop()
