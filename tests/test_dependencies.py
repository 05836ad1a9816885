"""Task dependencies (`depends_on`) on the real fleet: a child waits for its
parents, reads their results, is cancelled when one fails (unless it says
`on_parent_failure: "run"`), and a cancel cascades to waiting descendants."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aio_pika
import aiohttp
import orjson
from sqlalchemy import text

from services.dispatcher.state_fold import fold
from services.dispatcher.state_writer import TaskStateWriter
from shared.db.engine import create_engine
from shared.messages import parse_task_events
from shared.security.api_keys import Scope
from shared.topology import DISPATCHER_EVENTS_QUEUE
from tests.conftest import FleetFactory
from tests.support.api import ApiClient
from tests.support.eventually import eventually
from tests.support.fleet import Fleet, standard
from tests.support.keys import bearer, create_key
from tests.support.metrics import Scrape
from tests.test_submit_queue import SubmitClient, submitter  # noqa: F401 - the fixture


async def _batch(api: ApiClient, items: list[dict[str, Any]]) -> list[str]:
    ids: list[str] = []
    for start in range(0, len(items), 500):
        status, body = await api.call("POST", "/api/v1/tasks/batch", json={"tasks": items[start:start + 500]})
        assert status == 201, (status, body)
        ids.extend(r["task_id"] for r in body["results"])
    return ids


async def test_a_chain_runs_in_order_and_each_child_reads_its_parents_result(api: ApiClient) -> None:
    first = await api.submit({"task_type": "sleep", "payload": {"seconds": 0.5}})
    second = await api.submit({"task_type": "gather", "payload": {"label": "b"}, "depends_on": [first["task_id"]]})
    third = await api.submit({"task_type": "gather", "payload": {"label": "c"}, "depends_on": [second["task_id"]]})
    assert second["status"] == "waiting" and third["status"] == "waiting"
    assert (await api.get(third["task_id"]))["status"] == "waiting"

    done = await api.wait_for(third["task_id"])
    a, b = await api.get(first["task_id"]), await api.get(second["task_id"])
    assert [a["status"], b["status"], done["status"]] == ["completed"] * 3
    assert b["started_at"] >= a["finished_at"] and done["started_at"] >= b["finished_at"]
    assert b["result"]["results"] == {first["task_id"]: a["result"]}
    assert done["result"]["results"] == {second["task_id"]: b["result"]}


async def test_a_diamond_joins_both_branches(api: ApiClient) -> None:
    top = await api.submit({"task_type": "echo", "payload": {"n": 1}})
    left = await api.submit({"task_type": "sleep", "payload": {"seconds": 0.3}, "depends_on": [top["task_id"]]})
    right = await api.submit({"task_type": "echo", "payload": {"n": 2}, "depends_on": [top["task_id"]]})
    join = await api.submit({"task_type": "gather", "depends_on": [left["task_id"], right["task_id"]]})
    done = await api.wait_for(join["task_id"])
    assert done["status"] == "completed"
    assert done["result"]["completed"] == 2
    assert done["result"]["results"][right["task_id"]] == {"n": 2}
    for branch in (left, right):
        assert done["started_at"] >= (await api.get(branch["task_id"]))["finished_at"]
    # The read shows the parents (oldest first), in a single read and in the list.
    assert done["depends_on"] == [left["task_id"], right["task_id"]]
    assert (await api.get(top["task_id"]))["depends_on"] == []
    status, page = await api.call("GET", "/api/v1/tasks", params={"task_type": "gather", "limit": 50})
    assert status == 200
    listed = {t["task_id"]: t["depends_on"] for t in page["items"]}
    assert listed[join["task_id"]] == [left["task_id"], right["task_id"]]


async def test_a_failed_parent_cancels_its_waiting_descendants_unless_they_run_anyway(api: ApiClient) -> None:
    parent = await api.submit({"task_type": "sleep", "payload": {"seconds": 0.3}})
    failing = await api.submit({"task_type": "fail", "payload": {"permanent": True},
                                "depends_on": [parent["task_id"]]})
    child = await api.submit({"task_type": "echo", "depends_on": [failing["task_id"]]})
    grandchild = await api.submit({"task_type": "echo", "depends_on": [child["task_id"]]})
    brave = await api.submit({"task_type": "gather", "depends_on": [failing["task_id"]],
                              "on_parent_failure": "run"})

    cancelled = await api.wait_for(child["task_id"])
    assert cancelled["status"] == "cancelled" and cancelled["started_at"] is None
    assert cancelled["error"]["code"] == "dependency_failed"
    assert failing["task_id"] in cancelled["error"]["message"] and "failed" in cancelled["error"]["message"]
    below = await api.wait_for(grandchild["task_id"])
    assert below["status"] == "cancelled" and below["error"]["code"] == "dependency_failed"
    assert child["task_id"] in below["error"]["message"]

    ran = await api.wait_for(brave["task_id"])
    assert ran["status"] == "completed"
    assert ran["result"]["parents"] == 1 and ran["result"]["completed"] == 0


async def test_cancelling_a_parent_cascades_to_its_waiting_descendants(api: ApiClient) -> None:
    parent = await api.submit({"task_type": "sleep", "payload": {"seconds": 30}})
    child = await api.submit({"task_type": "echo", "depends_on": [parent["task_id"]]})
    grandchild = await api.submit({"task_type": "echo", "depends_on": [child["task_id"]]})
    await api.wait_for(parent["task_id"], {"processing"}, timeout=10)
    status, _ = await api.call("DELETE", f"/api/v1/tasks/{parent['task_id']}")
    assert status in (200, 202)
    for task_id in (child["task_id"], grandchild["task_id"]):
        task = await api.wait_for(task_id, timeout=10)
        assert task["status"] == "cancelled" and task["error"]["code"] == "dependency_failed"
        assert task["started_at"] is None


async def test_cancelling_a_waiting_task_cancels_it_and_its_children_only(api: ApiClient) -> None:
    parent = await api.submit({"task_type": "sleep", "payload": {"seconds": 0.5}})
    child = await api.submit({"task_type": "echo", "depends_on": [parent["task_id"]]})
    grandchild = await api.submit({"task_type": "echo", "depends_on": [child["task_id"]]})
    status, body = await api.call("DELETE", f"/api/v1/tasks/{child['task_id']}")
    assert status in (200, 202), body
    assert (await api.wait_for(child["task_id"], timeout=10))["status"] == "cancelled"
    below = await api.wait_for(grandchild["task_id"], timeout=10)
    assert below["status"] == "cancelled" and child["task_id"] in below["error"]["message"]
    assert (await api.wait_for(parent["task_id"]))["status"] == "completed"


async def test_an_unknown_parent_is_a_422_naming_it(api: ApiClient) -> None:
    real = await api.run({"task_type": "echo"})
    missing = str(uuid.uuid4())
    status, body = await api.call("POST", "/api/v1/tasks", json={
        "task_type": "echo", "depends_on": [real["task_id"], missing]})
    assert status == 422, body
    assert body["error"]["details"] == [{"field": "depends_on.1", "message": body["error"]["details"][0]["message"]}]
    assert missing in body["error"]["details"][0]["message"]

    status, body = await api.call("POST", "/api/v1/tasks", json={"task_type": "echo", "depends_on": ["nope"]})
    assert status == 422 and body["error"]["details"][0]["field"] == "depends_on.0"


async def test_a_parent_that_already_failed_is_a_422_unless_the_child_runs_anyway(api: ApiClient) -> None:
    failed = await api.run({"task_type": "fail", "payload": {"permanent": True}})
    assert failed["status"] == "failed"
    status, body = await api.call("POST", "/api/v1/tasks", json={"task_type": "echo",
                                                                 "depends_on": [failed["task_id"]]})
    assert status == 422 and failed["task_id"] in body["error"]["details"][0]["message"]
    anyway = await api.submit({"task_type": "gather", "depends_on": [failed["task_id"]], "on_parent_failure": "run"})
    assert anyway["status"] == "queued"  # nothing left to wait for: the direct path
    done = await api.wait_for(anyway["task_id"])
    assert done["result"]["parents"] == 1 and done["result"]["completed"] == 0


async def test_a_batch_item_can_depend_on_an_earlier_task(api: ApiClient) -> None:
    parent = await api.submit({"task_type": "sleep", "payload": {"seconds": 0.2}})
    [child] = await _batch(api, [{"task_type": "gather", "depends_on": [parent["task_id"]]}])
    assert (await api.get(child))["status"] == "waiting"
    assert (await api.wait_for(child))["result"]["completed"] == 1


async def test_fan_in_of_a_thousand_parents(api: ApiClient) -> None:
    parents = await _batch(api, [{"task_type": "echo", "payload": {"i": i}} for i in range(1000)])
    join = await api.submit({"task_type": "gather", "depends_on": parents})
    done = await api.wait_for(join["task_id"], timeout=120)
    assert done["status"] == "completed"
    assert done["result"]["parents"] == 1000 and done["result"]["completed"] == 1000
    assert done["result"]["results"][parents[7]] == {"i": 7}


async def test_fan_out_of_a_thousand_children(api: ApiClient) -> None:
    kb = f"kb_fan_out_{uuid.uuid4().hex[:8]}"
    parent = await api.submit({"task_type": "sleep", "payload": {"seconds": 0.5}})
    children = await _batch(api, [{"task_type": "echo", "kb_id": kb, "payload": {"i": i},
                                   "depends_on": [parent["task_id"]]} for i in range(1000)])

    async def all_done() -> None:
        status, page = await api.call("GET", f"/api/v1/tasks?kb_id={kb}&status=waiting,queued,processing&limit=1")
        assert status == 200 and page["items"] == []
    await eventually(all_done, timeout=120, interval=0.5)
    finals = [await api.get(t) for t in (children[0], children[499], children[-1])]
    assert {t["status"] for t in finals} == {"completed"}


async def _attempts(fleet: Fleet, http: aiohttp.ClientSession, task_type: str) -> float:
    worker = fleet.process("worker-default")
    async with http.get(worker.ready_url.replace("/health/ready", "/metrics")) as response:
        scrape = Scrape.parse(await response.text())
    return scrape.value("task_attempts_total", task_type=task_type, outcome="succeeded")


async def test_a_dispatcher_killed_with_the_parents_completion_pending_releases_the_child_once(
    fleet_factory: FleetFactory, http: aiohttp.ClientSession
) -> None:
    fleet = await fleet_factory(standard)
    api = ApiClient(fleet.api_url, http)
    parent = await api.submit({"task_type": "sleep", "payload": {"seconds": 1.5}})
    child = await api.submit({"task_type": "gather", "depends_on": [parent["task_id"]]})
    await api.wait_for(parent["task_id"], {"processing"}, timeout=10)

    dispatcher = fleet.process("dispatcher")
    dispatcher.kill()  # SIGKILL: the parent's completion will wait in tm.dispatcher.events

    async def parent_finished_on_the_worker() -> None:
        assert await _attempts(fleet, http, "sleep") == 1
    await eventually(parent_finished_on_the_worker, timeout=20)
    assert (await api.get(child["task_id"]))["status"] == "waiting"
    fleet.processes.remove(dispatcher)
    await fleet.start(fleet.add_dispatcher())

    done = await api.wait_for(child["task_id"], timeout=30)
    assert done["status"] == "completed" and done["result"]["completed"] == 1
    await asyncio.sleep(1.5)  # a second release, if there were one, would have run by now
    assert await _attempts(fleet, http, "gather") == 1
    assert (await api.get(child["task_id"]))["status"] == "completed"


async def test_a_release_committed_by_a_dispatcher_that_died_before_publishing_it_runs_once(
    fleet_factory: FleetFactory, http: aiohttp.ClientSession
) -> None:
    """The other half of the crash window: the parent's completion and the child's
    release committed (here by the dispatcher's own writer, driven by the test),
    then the dispatcher died before publishing; its successor publishes it, once."""
    fleet = await fleet_factory(standard)
    api = ApiClient(fleet.api_url, http)
    parent = await api.submit({"task_type": "sleep", "payload": {"seconds": 1}})
    child = await api.submit({"task_type": "gather", "depends_on": [parent["task_id"]]})
    await api.wait_for(parent["task_id"], {"processing"}, timeout=10)
    dispatcher = fleet.process("dispatcher")
    dispatcher.kill()
    fleet.processes.remove(dispatcher)

    async def parent_finished_on_the_worker() -> None:
        assert await _attempts(fleet, http, "sleep") == 1
    await eventually(parent_finished_on_the_worker, timeout=20)

    # What the dead dispatcher did before dying: fold the pending events, commit, ack.
    engine = create_engine(fleet.environment.postgres)
    connection = await aio_pika.connect(fleet.environment.amqp_url)
    try:
        async with connection:
            channel = await connection.channel()
            queue = await channel.get_queue(DISPATCHER_EVENTS_QUEUE, ensure=False)
            messages = []
            while (message := await queue.get(fail=False, no_ack=False)) is not None:
                messages.append(message)
            events = [e for m in messages for e in parse_task_events(m.body)]
            assert any(e.task_id == parent["task_id"] and e.kind == "completed" for e in events)
            await TaskStateWriter(engine, default_callback_url=None).apply(fold(events))
            for message in messages:
                await message.ack()
        async with engine.connect() as conn:
            pending = (await conn.execute(text("SELECT count(*) FROM task_releases"))).scalar_one()
        assert pending == 1
    finally:
        await engine.dispose()
    assert (await api.get(child["task_id"]))["status"] == "queued"

    await fleet.start(fleet.add_dispatcher())
    done = await api.wait_for(child["task_id"], timeout=30)
    assert done["status"] == "completed" and done["result"]["completed"] == 1
    await asyncio.sleep(1.5)  # a second release, if there were one, would have run by now
    assert await _attempts(fleet, http, "gather") == 1


async def test_another_tenants_parent_is_a_422_exactly_like_an_unknown_one(
    fleet_factory: FleetFactory, http: aiohttp.ClientSession
) -> None:
    secured = {"AUTH_REQUIRED": "true", "API_KEY_CACHE_SECONDS": "0"}

    def configure(fleet: Fleet) -> None:
        fleet.add_api(**secured)
        fleet.add_worker(**secured)
        fleet.add_dispatcher(**secured)

    fleet = await fleet_factory(configure)
    rw = [Scope.TASKS_READ, Scope.TASKS_WRITE]
    tenant_a = await create_key(fleet.environment, "a", rw, kb_ids=["kb_a"])
    tenant_b = await create_key(fleet.environment, "b", rw, kb_ids=["kb_b"])
    api = ApiClient(fleet.api_url, http)
    status, theirs = await api.call("POST", "/api/v1/tasks", json={"task_type": "echo", "kb_id": "kb_a"},
                                    headers=bearer(tenant_a))
    assert status == 201, theirs
    status, body = await api.call("POST", "/api/v1/tasks", headers=bearer(tenant_b), json={
        "task_type": "echo", "kb_id": "kb_b", "depends_on": [theirs["task_id"]]})
    assert status == 422, body
    [detail] = body["error"]["details"]
    assert detail["field"] == "depends_on.0" and theirs["task_id"] in detail["message"]
    status, mine = await api.call("POST", "/api/v1/tasks", headers=bearer(tenant_a), json={
        "task_type": "gather", "kb_id": "kb_a", "depends_on": [theirs["task_id"]]})
    assert status == 201, mine


async def test_depends_on_over_tm_submit(submitter: SubmitClient, api: ApiClient) -> None:  # noqa: F811
    parent = await api.submit({"task_type": "sleep", "payload": {"seconds": 0.2}})
    reply = await submitter.submit(orjson.dumps({"task_type": "gather", "depends_on": [parent["task_id"]]}))
    assert reply["ok"] and reply["status"] == "waiting", reply
    done = await api.wait_for(reply["task_id"])
    assert done["result"]["completed"] == 1
    refused = await submitter.submit(orjson.dumps({"task_type": "gather", "depends_on": [str(uuid.uuid4())]}))
    assert not refused["ok"] and refused["error"]["details"][0]["field"] == "depends_on.0", refused


async def test_a_worker_killed_while_the_parent_runs_still_runs_the_child_once(
    fleet_factory: FleetFactory, http: aiohttp.ClientSession
) -> None:
    fleet = await fleet_factory(standard)
    api = ApiClient(fleet.api_url, http)
    parent = await api.submit({"task_type": "sleep", "payload": {"seconds": 1}})
    child = await api.submit({"task_type": "gather", "depends_on": [parent["task_id"]]})
    await api.wait_for(parent["task_id"], {"processing"}, timeout=10)
    worker = fleet.process("worker-default")
    worker.kill()  # the parent's delivery goes back to its queue
    fleet.processes.remove(worker)
    assert (await api.get(child["task_id"]))["status"] == "waiting"
    await fleet.start(fleet.add_worker())

    done = await api.wait_for(child["task_id"], timeout=60)
    assert done["status"] == "completed" and done["result"]["completed"] == 1
    assert (await api.get(parent["task_id"]))["status"] == "completed"
    await asyncio.sleep(1.5)  # a second release, if there were one, would have run by now
    assert await _attempts(fleet, http, "gather") == 1


async def test_a_cancelled_waiting_task_forgets_its_message_at_once(fleet: Fleet, api: ApiClient) -> None:
    """The waiting message may hold a secret (a PDF password): it goes with the cancel,
    not when the parent ends."""
    parent = await api.submit({"task_type": "sleep", "payload": {"seconds": 30}})
    child = await api.submit({"task_type": "echo", "depends_on": [parent["task_id"]]})
    engine = create_engine(fleet.environment.postgres)
    query = text("SELECT count(*) FROM waiting_tasks WHERE task_id = CAST(:id AS uuid)")
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(query, {"id": child["task_id"]})).scalar_one() == 1
        status, _ = await api.call("DELETE", f"/api/v1/tasks/{child['task_id']}")
        assert status in (200, 202)
        assert (await api.wait_for(child["task_id"], timeout=10))["status"] == "cancelled"
        async with engine.connect() as conn:
            assert (await conn.execute(query, {"id": child["task_id"]})).scalar_one() == 0
    finally:
        await engine.dispose()
        await api.call("DELETE", f"/api/v1/tasks/{parent['task_id']}")
