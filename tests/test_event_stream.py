"""GET /api/v1/events against the real fleet: filters, tenancy, resuming after
an api restart from the event log, heartbeats, and a slow client cut off."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Callable

import aiohttp

from tests.conftest import FleetFactory
from tests.support.api import ApiClient
from tests.support.eventually import eventually
from tests.support.fleet import Fleet
from tests.support.metrics import scrape
from tests.support.sse import EventStream
from tests.test_auth import KB_A, KB_B, Secured, secured  # noqa: F401 - the module fixture, used below


def _api_with(**env: str) -> Callable[[Fleet], None]:
    def configure(fleet: Fleet) -> None:
        fleet.add_api(**env)
        fleet.add_worker()
        fleet.add_dispatcher()
    return configure


def _kb() -> str:
    return f"kb_events_{uuid.uuid4().hex[:10]}"


def _of(task_id: str, kind: str) -> object:
    return lambda m: m.event == f"task.{kind}" and m.json()["task_id"] == task_id


async def test_a_stream_carries_the_events_of_its_kb_only(api: ApiClient, http: aiohttp.ClientSession) -> None:
    kb, other = _kb(), _kb()
    async with EventStream(http, f"{api.base_url}/api/v1/events?kb_id={kb}") as stream:
        assert stream.status == 200
        elsewhere = await api.run({"task_type": "echo", "kb_id": other, "payload": {"n": 0}})
        mine = await api.run({"task_type": "sleep", "kb_id": kb, "payload": {"seconds": 0.5}})
        done = await stream.wait_for(_of(mine["task_id"], "completed"))
    assert done.id and done.json()["kb_id"] == kb
    assert stream.events("task.started"), "a task that runs long enough announces its start"
    seen = {m.json()["task_id"] for m in stream.events() if m.event.startswith("task.")}
    assert seen == {mine["task_id"]}, f"{elsewhere['task_id']} is of another kb"


async def test_task_id_and_task_type_filters(api: ApiClient, http: aiohttp.ClientSession) -> None:
    kb = _kb()
    first = await api.submit({"task_type": "echo", "kb_id": kb})
    url = f"{api.base_url}/api/v1/events?task_id={first['task_id']}&last_event_id=0"
    async with EventStream(http, url) as by_id, \
            EventStream(http, f"{api.base_url}/api/v1/events?task_type=fail&kb_id={kb}") as by_type:
        # last_event_id=0 replays the window: the task's completion is there even if it came first.
        await by_id.wait_for(_of(first["task_id"], "completed"))
        failing = await api.run({"task_type": "fail", "kb_id": kb, "retry_limit": 0, "payload": {"permanent": True}})
        await by_type.wait_for(_of(failing["task_id"], "failed"))
        await api.run({"task_type": "echo", "kb_id": kb})
        await asyncio.sleep(0.5)  # a poll or two: nothing else may arrive
    assert {m.json()["task_id"] for m in by_id.events()} == {first["task_id"]}
    assert {m.json()["task_type"] for m in by_type.events()} == {"fail"}


async def test_bad_queries_are_refused(api: ApiClient) -> None:
    for query in ("task_id=nope", "kb_id=a%20b", "colour=red"):
        status, body = await api.call("GET", f"/api/v1/events?{query}")
        assert status == 422, (query, body)
    status, body = await api.call("GET", "/api/v1/events", headers={"Last-Event-ID": "yesterday"})
    assert status == 422 and body["error"]["details"][0]["field"] == "Last-Event-ID"


async def test_a_key_sees_only_its_kbs(secured: Secured, http: aiohttp.ClientSession) -> None:  # noqa: F811
    reader = secured.keys["reader_a"]
    tenant_a, tenant_b = secured.client(http, "tenant_a"), secured.client(http, "tenant_b")
    url = f"{secured.fleet.api_url}/api/v1/events"
    async with EventStream(http, url, headers={"Authorization": f"Bearer {reader}"}) as stream, \
            EventStream(http, f"{url}?kb_id={KB_B}", headers={"Authorization": f"Bearer {reader}"}) as other:
        b_task = await tenant_b.run({"task_type": "echo", "kb_id": KB_B})
        a_task = await tenant_a.run({"task_type": "echo", "kb_id": KB_A})
        await stream.wait_for(_of(a_task["task_id"], "completed"))
        await asyncio.sleep(0.5)
    assert all(m.json()["kb_id"] == KB_A for m in stream.events()), b_task
    assert other.status == 200 and other.events() == [], "another tenant's kb streams nothing"
    async with http.get(url) as response:
        assert response.status == 401


async def test_resuming_after_an_api_restart_misses_nothing(fleet_factory: FleetFactory,
                                                            http: aiohttp.ClientSession) -> None:
    fleet = await fleet_factory(_api_with(EVENT_STREAM_HEARTBEAT="0.2"))
    api = ApiClient(fleet.api_url, http)
    kb = _kb()
    url = f"{api.base_url}/api/v1/events?kb_id={kb}"
    async with EventStream(http, url) as stream:
        first = await api.run({"task_type": "echo", "kb_id": kb, "payload": {"n": 1}})
        seen = await stream.wait_for(_of(first["task_id"], "completed"))
        await stream.wait_for(lambda m: m.comment == "heartbeat")
    later = [await api.submit({"task_type": "sleep", "kb_id": kb, "payload": {"seconds": 1}}) for _ in range(3)]

    api_process = fleet.process("api")
    api_process.stop()  # the tasks run on while the api is away
    engine_api = ApiClient(fleet.api_url, http)
    await fleet.start(api_process)
    for task in later:
        assert (await engine_api.wait_for(task["task_id"]))["status"] == "completed"

    async with EventStream(http, url, headers={"Last-Event-ID": seen.id}) as resumed:
        for task in later:
            await resumed.wait_for(_of(task["task_id"], "completed"))
    ids = [m.id for m in resumed.events()]
    assert seen.id not in ids and len(ids) == len(set(ids)), "after the last one seen, each once"
    assert {m.json()["task_id"] for m in resumed.events()} == {t["task_id"] for t in later}


async def test_an_id_older_than_the_window_says_so(fleet_factory: FleetFactory,
                                                   http: aiohttp.ClientSession) -> None:
    def short_window(fleet: Fleet) -> None:
        fleet.add_api()
        fleet.add_worker()
        fleet.add_dispatcher(EVENT_LOG_RETENTION="1")

    fleet = await fleet_factory(short_window)
    api = ApiClient(fleet.api_url, http)
    kb = _kb()
    url = f"{api.base_url}/api/v1/events?kb_id={kb}"
    async with EventStream(http, url) as stream:
        task = await api.run({"task_type": "echo", "kb_id": kb})
        seen = await stream.wait_for(_of(task["task_id"], "completed"))

    async def reset_on_resume() -> dict:  # type: ignore[type-arg]
        async with EventStream(http, url, headers={"Last-Event-ID": seen.id}) as resumed:
            await asyncio.sleep(0.3)
        resets = resumed.events("stream.reset")
        assert len(resets) == 1, "still inside the window"
        return resets[0].json()  # type: ignore[no-any-return]

    reset = await eventually(reset_on_resume, timeout=30, interval=0.5)
    assert reset["reason"] == "outside_window" and reset["last_event_id"] == seen.id
    assert "EVENT_LOG_RETENTION" in reset["message"]


async def _stalled_client(fleet: Fleet, kb: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client that opens a stream and then reads nothing (a tiny receive window)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", fleet.api_port))
    # A small limit: the reader stops taking bytes off the socket once it holds 2 x 16 KiB.
    reader, writer = await asyncio.open_connection(sock=sock, limit=2**14)
    writer.write(f"GET /api/v1/events?kb_id={kb} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    return reader, writer


async def test_a_slow_client_is_closed_with_a_reason(fleet_factory: FleetFactory, http: aiohttp.ClientSession) -> None:
    fleet = await fleet_factory(_api_with(EVENT_STREAM_BUFFER="2"))
    api = ApiClient(fleet.api_url, http)
    kb = _kb()
    reader, writer = await _stalled_client(fleet, kb)
    blob = "x" * 400_000  # each completion carries its result: megabytes the client does not read
    tasks = [await api.submit({"task_type": "echo", "kb_id": kb, "payload": {"blob": blob}}) for _ in range(30)]
    for task in tasks:
        await api.wait_for(task["task_id"])

    async def closed_as_slow() -> None:
        metrics = await scrape(http, f"{fleet.api_url}/metrics")
        assert metrics.value("event_streams_closed_total", reason="slow_client") == 1
        assert metrics.value("event_streams_open") == 0

    await eventually(closed_as_slow, timeout=30)
    body = (await asyncio.wait_for(reader.read(), 60)).decode(errors="replace")
    writer.close()
    final = body[body.rindex("event: stream.closed"):]
    assert '"reason":"slow_client"' in final and "EVENT_STREAM_BUFFER" in final
    assert body.count("event: task.completed") < len(tasks), "it was cut off, not served everything"
