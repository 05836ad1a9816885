"""Concurrency keys (decision 0160): at most `max_concurrency` tasks of one key run
at once; the others wait `queued` in PostgreSQL, not in the broker. Overlap is
judged on the started and finished times the database recorded.
(The per-document default key: tests/pipeline/test_pipeline.py.)"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import aiohttp
from sqlalchemy import text

from shared.db.engine import create_engine
from tests.conftest import FleetFactory
from tests.support.api import ApiClient
from tests.support.fleet import Fleet, standard
from tests.support.metrics import metrics_url, scrape


def _most_at_once(tasks: list[dict[str, Any]]) -> int:
    """The most runs that were between started_at and finished_at at one moment."""
    moments = sorted([(datetime.fromisoformat(t["started_at"]), 1) for t in tasks]
                     + [(datetime.fromisoformat(t["finished_at"]), -1) for t in tasks])  # an end sorts first
    running = most = 0
    for _, step in moments:
        running += step
        most = max(most, running)
    return most


async def _run_keyed(api: ApiClient, count: int, limit: int, seconds: float) -> list[dict[str, Any]]:
    key = f"k-{uuid.uuid4()}"
    status, created = await api.call("POST", "/api/v1/tasks/batch", json={"tasks": [
        {"task_type": "sleep", "payload": {"seconds": seconds}, "concurrency_key": key, "max_concurrency": limit}
        for _ in range(count)]})
    assert status == 201, created
    ids = [item["task_id"] for item in created["results"]]
    first = await api.wait_for(ids[0], {"processing", "completed"}, timeout=20)
    if first["status"] == "processing":  # the rest wait queued (not processing) meanwhile
        assert (await api.get(ids[-1]))["status"] == "queued"
    done = [await api.wait_for(task_id, timeout=30) for task_id in ids]
    assert all(t["status"] == "completed" for t in done), done
    assert done[0]["concurrency_key"] == key and done[0]["max_concurrency"] == limit
    return done


async def test_a_key_with_limit_1_runs_its_tasks_one_at_a_time(api: ApiClient) -> None:
    # The session worker has 8 slots: without the key these would all run at once.
    assert _most_at_once(await _run_keyed(api, count=4, limit=1, seconds=0.4)) == 1


async def test_a_key_with_limit_2_runs_two_at_a_time_never_three(api: ApiClient) -> None:
    assert _most_at_once(await _run_keyed(api, count=6, limit=2, seconds=0.5)) == 2


async def test_keys_are_checked_at_submission(api: ApiClient) -> None:
    status, body = await api.call("POST", "/api/v1/tasks", json={"task_type": "echo", "max_concurrency": 2})
    assert status == 422 and body["error"]["details"][0]["field"] == "max_concurrency", body
    status, body = await api.call("POST", "/api/v1/tasks", json={
        "task_type": "document_deletion", "kb_id": "kb_1", "payload": {"document_id": "d"}, "concurrency_key": "x"})
    assert status == 422 and body["error"]["details"][0]["field"] == "concurrency_key", body


async def _slots(fleet: Fleet) -> tuple[int, int]:
    engine = create_engine(fleet.environment.postgres)
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(text("SELECT (SELECT count(*) FROM concurrency_slots) AS held, "
                                           "(SELECT count(*) FROM concurrency_waiting) AS waiting"))).one()
    finally:
        await engine.dispose()
    return row.held, row.waiting


async def test_a_worker_killed_holding_a_slot_hands_it_on_through_its_task(
    fleet_factory: FleetFactory, http: aiohttp.ClientSession
) -> None:
    fleet = await fleet_factory(lambda f: (standard(f), f.add_worker(name="worker-spare")))
    api = ApiClient(fleet.api_url, http)
    key = {"concurrency_key": "lock", "max_concurrency": 1}
    holder = await api.submit({"task_type": "sleep", "payload": {"seconds": 1.5}, **key})
    waiter = await api.submit({"task_type": "sleep", "payload": {"seconds": 0.1}, **key})
    await api.wait_for(holder["task_id"], {"processing"}, timeout=15)
    assert await _slots(fleet) == (1, 1)
    workers = [fleet.process("worker-default"), fleet.process("worker-spare")]
    busy = [w for w in workers
            if (await scrape(http, metrics_url(w))).value("worker_pool_active_count", stage="default") == 1]
    assert len(busy) == 1
    busy[0].kill()  # SIGKILL: the broker hands the delivery to the other worker; the run keeps its slot
    fleet.processes.remove(busy[0])

    done_waiter = await api.wait_for(waiter["task_id"], timeout=30)
    done_holder = await api.get(holder["task_id"])
    assert done_holder["status"] == done_waiter["status"] == "completed", (done_holder, done_waiter)
    # The holder ran again to its end before the waiter started: the lock was never broken.
    assert _most_at_once([done_holder, done_waiter]) == 1
    assert await _slots(fleet) == (0, 0)


async def test_a_task_cancelled_while_waiting_for_its_key_gives_its_place_up(api: ApiClient, fleet: Fleet) -> None:
    key = {"concurrency_key": f"k-{uuid.uuid4()}"}
    holder = await api.submit({"task_type": "sleep", "payload": {"seconds": 1}, **key})
    waiter = await api.submit({"task_type": "sleep", "payload": {"seconds": 1}, **key})
    last = await api.submit({"task_type": "echo", **key})
    status, cancelled = await api.call("DELETE", f"/api/v1/tasks/{waiter['task_id']}")
    assert status in (200, 202) and (await api.wait_for(waiter["task_id"]))["status"] == "cancelled", cancelled
    done = [await api.wait_for(t["task_id"]) for t in (holder, last)]
    assert [t["status"] for t in done] == ["completed", "completed"] and _most_at_once(done) == 1
    assert (await api.get(waiter["task_id"]))["started_at"] is None


async def test_a_document_task_with_a_secret_is_refused_rather_than_stored_while_its_document_is_busy(
    api: ApiClient,
) -> None:
    # The session fleet runs no pipeline worker: the first run holds the document's slot.
    kb, body = f"kb_{uuid.uuid4().hex[:8]}", {"file_path": "a.pdf", "document_id": "doc"}
    first = await api.submit({"task_type": "document_processing", "kb_id": kb, "payload": body})
    status, refused = await api.call("POST", "/api/v1/tasks", json={
        "task_type": "document_processing", "kb_id": kb, "payload": {**body, "password": "s3cret"}})
    assert status == 409 and "secret" in refused["error"]["message"], refused
    other = await api.submit({"task_type": "document_deletion", "kb_id": kb, "payload": {"document_id": "doc"}})
    waiting = await api.get(other["task_id"])
    assert waiting["status"] == "queued" and waiting["concurrency_key"] == f"document:{kb}:doc", waiting
    for task in (other, first):  # the waiting one first: cancelling the holder would release it
        await api.call("DELETE", f"/api/v1/tasks/{task['task_id']}")
        assert (await api.wait_for(task["task_id"]))["status"] == "cancelled"
