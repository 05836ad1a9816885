"""Callback URLs cannot be aimed at the service's own network (OWASP API7):
refused at submit time when that can be told, refused at send time when DNS
says so then, and redirects never followed. No test here sends traffic to a
non-loopback address: every refusal happens before a connection."""

from __future__ import annotations

import asyncio
import time
import uuid

import aio_pika
import aiohttp
import orjson
import pytest

from tests.conftest import FleetFactory
from tests.support.api import ApiClient
from tests.support.callback_receiver import CallbackReceiver
from tests.support.fleet import Fleet

REFUSED_AT_SUBMIT = [
    ("http://localhost/hook", "loopback"),  # a hostname resolving to loopback
    ("http://2130706433/hook", "loopback"),  # 127.0.0.1 spelled as a number
    ("http://127.0.0.1/hook", "loopback"),
    ("http://[::ffff:127.0.0.1]/hook", "loopback"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),  # cloud metadata
    ("http://10.1.2.3/hook", "private"),
    ("http://192.168.0.10/hook", "private"),
    ("http://224.0.0.1/hook", "multicast"),
    ("https://example.com:6379/hook", "port 6379"),
    ("http://user:password@example.com/hook", "credentials"),
]


def _production_like_api(fleet: Fleet) -> None:
    fleet.add_api(CALLBACK_ALLOWED_HOSTS="none")  # no allowlist, as in production


@pytest.fixture
async def strict_api(fleet_factory: FleetFactory, http: aiohttp.ClientSession) -> tuple[Fleet, ApiClient]:
    fleet = await fleet_factory(_production_like_api)
    return fleet, ApiClient(fleet.api_url, http)


async def test_refused_callback_urls_are_a_422_at_submit_time(strict_api: tuple[Fleet, ApiClient]) -> None:
    _, api = strict_api
    for url, reason in REFUSED_AT_SUBMIT:
        status, error = await api.call("POST", "/api/v1/tasks", json={"task_type": "echo", "callback_url": url})
        assert status == 422, (url, error)
        [detail] = error["error"]["details"]
        assert detail["field"] == "callback_url" and reason in detail["message"], (url, detail)
    status, batch = await api.call("POST", "/api/v1/tasks/batch", json={"tasks": [
        {"task_type": "echo"}, {"task_type": "echo", "callback_url": "http://169.254.169.254/"}]})
    assert status == 207 and batch["results"][1]["error"]["details"][0]["field"] == "callback_url"
    _, listed = await api.call("GET", "/api/v1/tasks?limit=200")
    assert len(listed["items"]) == 1, "only the acceptable batch item was created"


async def test_tm_submit_refuses_the_same_urls_and_dead_letters_the_message(
    strict_api: tuple[Fleet, ApiClient]
) -> None:
    fleet, _ = strict_api
    connection = await aio_pika.connect(fleet.environment.amqp_url)
    async with connection:
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True)
        await channel.default_exchange.publish(
            aio_pika.Message(orjson.dumps({"task_type": "echo", "callback_url": "http://169.254.169.254/x"}),
                             reply_to=replies.name, correlation_id="c1"),
            routing_key="tm.submit",
        )
        async with replies.iterator(timeout=10) as messages:
            async for message in messages:
                reply = orjson.loads(message.body)
                break
    assert reply["ok"] is False and reply["error"]["details"][0]["field"] == "callback_url"


def _send_time_fleet(port: int):  # type: ignore[no-untyped-def]
    def configure(fleet: Fleet) -> None:
        # The api was told localhost is fine; the dispatcher (as if DNS changed since) is not.
        # Its port is allowed, so the refusal comes from the address the resolver returned.
        fleet.add_api(CALLBACK_ALLOWED_HOSTS="localhost")
        fleet.add_worker()
        fleet.add_dispatcher(CALLBACK_ALLOWED_HOSTS="none", CALLBACK_ALLOWED_PORTS=str(port))
    return configure


async def test_the_dispatcher_refuses_at_send_time_without_connecting_or_retrying(
    fleet_factory: FleetFactory, http: aiohttp.ClientSession, receiver: CallbackReceiver
) -> None:
    fleet = await fleet_factory(_send_time_fleet(receiver.port))
    api = ApiClient(fleet.api_url, http)
    path = f"late-{uuid.uuid4().hex[:6]}"
    task = await api.run({"task_type": "echo", "callback_url": f"http://localhost:{receiver.port}/{path}"})
    view = await api.wait_for_callback(task["task_id"], "failed")
    assert view["callback"]["attempts"] == 1, "a policy refusal is final"
    assert "refused by the callback policy" in view["callback"]["last_error"]
    assert "localhost (127.0.0.1) is a loopback address" in view["callback"]["last_error"] or \
        "localhost (::1) is a loopback address" in view["callback"]["last_error"]
    await asyncio.sleep(0.5)
    assert receiver.for_path(path) == []


async def test_a_redirect_to_a_private_address_is_never_followed(
    api: ApiClient, receiver: CallbackReceiver
) -> None:
    path = f"redirect-{uuid.uuid4().hex[:6]}"
    receiver.redirects[path] = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
    task = await api.run({"task_type": "echo", "callback_url": receiver.url(path)})
    deadline = time.monotonic() + 20
    while True:
        view = await api.get(task["task_id"])
        callback = view.get("callback") or {}
        if callback.get("attempts", 0) >= 1 and callback.get("last_error"):
            break
        assert time.monotonic() < deadline, view
        await asyncio.sleep(0.05)
    assert callback["last_error"] == "HTTP 302: redirects are not followed"
    assert all(hit.status == 302 for hit in receiver.for_path(path))
