"""The Python SDK (clients/python, `import tmclient`) against the real fleet:
async and sync clients, wait() on the event stream and by polling, retry of
429/503, the AMQP helper, and its models against the live OpenAPI document."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import pytest
from aiohttp import web

from tests.support.api import ApiClient
from tests.support.fleet import Fleet
from tests.support.loopback_server import LoopbackServer

# The SDK is its own package; the suite uses the source tree (an installed copy works too).
CLIENT_DIR = Path(__file__).resolve().parents[1] / "clients" / "python"
if str(CLIENT_DIR) not in sys.path:
    sys.path.insert(0, str(CLIENT_DIR))

from tmclient import ApiError, AsyncClient, Client, Progress, RetryPolicy, SubmitRefused
from tmclient.amqp import AmqpSubmitter
from tmclient.models import MIRRORED


def _kb() -> str:
    return f"kb_sdk_{uuid.uuid4().hex[:10]}"


async def test_async_submit_and_wait_follow_the_event_stream(fleet: Fleet) -> None:
    seen: list[Progress] = []
    async with AsyncClient(fleet.api_url) as tm:
        created = await tm.submit("sleep", {"seconds": 1}, kb_id=_kb())
        task = await tm.wait(created.task_id, timeout=30, on_progress=seen.append)
    assert task.status == "completed" and task.task_id == created.task_id
    assert any(p.status == "processing" and 0 < p.progress < 100 for p in seen), seen
    assert seen[-1].status == "completed"


async def test_wait_polls_when_told_not_to_stream(fleet: Fleet) -> None:
    async with AsyncClient(fleet.api_url) as tm:
        created = await tm.submit("echo", {"x": 1})
        task = await tm.wait(created.task_id, timeout=30, use_events=False, poll_interval=0.1)
    assert task.result == {"x": 1}


def test_sync_client_covers_the_task_verbs(fleet: Fleet) -> None:
    kb = _kb()
    with Client(fleet.api_url) as tm:
        done = tm.wait(tm.submit("echo", {"n": 1}, kb_id=kb, idempotency_key=f"k-{kb}").task_id, timeout=30)
        again = tm.submit("echo", {"n": 1}, kb_id=kb, idempotency_key=f"k-{kb}")
        assert again.task_id == done.task_id, "the same idempotency key, the same task"
        batch = tm.batch([{"task_type": "echo", "kb_id": kb, "payload": {"n": i}} for i in range(3)])
        assert batch.created == 3 and all(r.ok for r in batch.results)
        listed = list(tm.iter_tasks(kb_id=kb, limit=2))
        assert len(listed) == 4 and {t.kb_id for t in listed} == {kb}

        running = tm.submit("sleep", {"seconds": 2}, kb_id=kb)
        cancelled = tm.cancel(running.task_id)
        assert cancelled.status in ("cancelled", "queued", "processing")
        assert tm.wait(running.task_id, timeout=30).status == "cancelled"
        retried = tm.retry(running.task_id)
        assert retried.run == 2
        assert tm.wait(running.task_id, timeout=30).status == "completed"

        with pytest.raises(ApiError) as refused:
            tm.retry(done.task_id)
        assert refused.value.status == 409 and refused.value.code == "conflict"
        with pytest.raises(ApiError) as invalid:
            tm.submit("no_such_type")
        assert invalid.value.status == 422 and invalid.value.details


async def test_upload_then_a_task_on_the_file(fleet: Fleet) -> None:
    kb = _kb()
    async with AsyncClient(fleet.api_url) as tm:
        upload = await tm.upload(kb, b"hello from the sdk\n", filename="hello.txt")
        assert upload.kb_id == kb and upload.size == 19
        created = await tm.submit("file_digest", {"file_ref": upload.file_ref}, kb_id=kb)
        task = await tm.wait(created.task_id, timeout=30)
    assert task.status == "completed", task.error


async def test_events_iterates_a_kb_stream(fleet: Fleet) -> None:
    kb = _kb()
    async with AsyncClient(fleet.api_url) as tm:
        created = await tm.submit("echo", {"e": 1}, kb_id=kb)
        async with asyncio.timeout(30):
            async for event in tm.events(kb_id=kb, last_event_id="0"):
                if event.kind == "completed":
                    break
    assert event.task_id == created.task_id and event.id and event.data["result"] == {"e": 1}


async def test_models_match_the_openapi_document(api: ApiClient) -> None:
    status, doc = await api.call("GET", "/api/v1/openapi.json")
    assert status == 200
    schemas = doc["components"]["schemas"]
    for model in MIRRORED:
        schema = schemas[model.SCHEMA]
        fields = set(model.model_fields)
        assert fields == set(schema["properties"]), (model.__name__, fields ^ set(schema["properties"]))
        required = {name for name, f in model.model_fields.items() if f.is_required()}
        assert required == set(schema.get("required", [])), (model.__name__, required)


async def test_429_and_503_are_retried_honouring_retry_after() -> None:
    calls: list[float] = []

    async def flaky(request: web.Request) -> web.Response:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) == 1:
            return web.json_response({"error": {"code": "rate_limited", "message": "slow down"}}, status=429,
                                     headers={"Retry-After": "1"})
        if len(calls) == 2:
            return web.json_response({"error": {"code": "unavailable", "message": "busy"}}, status=503,
                                     headers={"Retry-After": "0"})
        return web.json_response({"task_id": "t", "status": "queued", "created_at": "2026-11-29T00:00:00Z"},
                                 status=201)

    async def always_busy(request: web.Request) -> web.Response:
        return web.json_response({"error": {"code": "unavailable", "message": "busy"}}, status=503,
                                 headers={"Retry-After": "0"})

    class Flaky(LoopbackServer):
        def add_routes(self, app: web.Application) -> None:
            app.router.add_post("/api/v1/tasks", flaky)
            app.router.add_get("/api/v1/tasks/{task_id}", always_busy)

    server = Flaky()
    await server.start()
    try:
        await _exercise_retries(f"http://127.0.0.1:{server.port}", calls)
    finally:
        await server.stop()


async def _exercise_retries(url: str, calls: list[float]) -> None:
    async with AsyncClient(url) as tm:
        created = await tm.submit("echo")
        assert created.task_id == "t" and len(calls) == 3
        assert calls[1] - calls[0] >= 1.0, "waited the Retry-After of the 429"
        tm.retry_policy = RetryPolicy(max_retries=2)
        with pytest.raises(ApiError) as busy:
            await tm.get("t")
        assert busy.value.status == 503 and busy.value.retry_after == 0


async def test_the_amqp_helper_submits_over_tm_submit(fleet: Fleet, api: ApiClient) -> None:
    async with AmqpSubmitter(fleet.environment.amqp_url) as amqp:
        key = uuid.uuid4().hex
        created = await amqp.submit({"task_type": "echo", "payload": {"via": "amqp"}}, idempotency_key=key)
        again = await amqp.submit({"task_type": "echo", "payload": {"via": "amqp"}}, idempotency_key=key)
        assert again.task_id == created.task_id
        with pytest.raises(SubmitRefused) as refused:
            await amqp.submit({"task_type": "no_such_type"})
        assert refused.value.code == "validation_error" and refused.value.details
    task = await api.wait_for(created.task_id)
    assert task["status"] == "completed" and task["result"] == {"via": "amqp"}
