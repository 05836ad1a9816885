"""POST/GET/DELETE /api/v1/workflows on the real fleet: tasks named by ref,
admitted all or nothing, one callback when the whole workflow ends."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aio_pika
import orjson

from shared.topology import SUBMIT_QUEUE
from tests.support.api import ApiClient
from tests.support.callback_receiver import CallbackReceiver
from tests.support.fleet import Fleet


async def _create(api: ApiClient, body: dict[str, Any]) -> dict[str, Any]:
    status, created = await api.call("POST", "/api/v1/workflows", json=body)
    assert status == 201, (status, created)
    return created  # type: ignore[no-any-return]


async def _wait(api: ApiClient, workflow_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status, view = await api.call("GET", f"/api/v1/workflows/{workflow_id}")
        assert status == 200, view
        if view["status"] != "running":
            return view  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"workflow still running after {timeout}s: {view['counts']}"
        await asyncio.sleep(0.1)


async def test_a_diamond_workflow_runs_in_order_and_calls_back_once(api: ApiClient, receiver: CallbackReceiver) -> None:
    created = await _create(api, {"callback_url": receiver.url("wf-diamond"), "tasks": [
        {"ref": "join", "task_type": "gather", "depends_on": ["left", "right"]},
        {"ref": "top", "task_type": "echo", "payload": {"n": 0}},
        {"ref": "left", "task_type": "sleep", "payload": {"seconds": 0.3}, "depends_on": ["top"]},
        {"ref": "right", "task_type": "echo", "payload": {"n": 2}, "depends_on": ["top"]},
    ]})
    tasks = created["tasks"]
    assert tasks["top"]["status"] == "queued" and tasks["join"]["status"] == "waiting"

    view = await _wait(api, created["workflow_id"])
    assert view["status"] == "completed" and view["progress"] == 100 and view["counts"] == {"completed": 4}
    assert view["finished_at"] and view["estimated_completion"] is None
    join = await api.get(tasks["join"]["task_id"])
    assert join["result"]["results"][tasks["right"]["task_id"]] == {"n": 2}
    for branch in ("left", "right"):
        assert join["started_at"] >= (await api.get(tasks[branch]["task_id"]))["finished_at"]

    [hit] = await receiver.wait_for("wf-diamond")
    assert hit.json["workflow_id"] == created["workflow_id"] and hit.json["status"] == "completed"
    assert hit.json["tasks"]["join"] == {"task_id": tasks["join"]["task_id"], "status": "completed"}
    await asyncio.sleep(1)  # a second callback, if there were one, would be here by now
    assert len(receiver.for_path("wf-diamond")) == 1


async def test_a_chain_workflow_passes_results_down(api: ApiClient) -> None:
    created = await _create(api, {"tasks": [
        {"ref": "one", "task_type": "echo", "payload": {"step": 1}},
        {"ref": "two", "task_type": "gather", "payload": {"label": "two"}, "depends_on": ["one"]},
        {"ref": "three", "task_type": "gather", "payload": {"label": "three"}, "depends_on": ["two"]},
    ]})
    view = await _wait(api, created["workflow_id"])
    assert view["status"] == "completed"
    three = await api.get(created["tasks"]["three"]["task_id"])
    two_id = created["tasks"]["two"]["task_id"]
    assert three["result"]["results"][two_id]["results"] == {created["tasks"]["one"]["task_id"]: {"step": 1}}


async def test_a_failing_task_cancels_its_dependants_and_fails_the_workflow(
    api: ApiClient, receiver: CallbackReceiver
) -> None:
    created = await _create(api, {"callback_url": receiver.url("wf-failed"), "tasks": [
        {"ref": "bad", "task_type": "fail", "payload": {"permanent": True}},
        {"ref": "after", "task_type": "echo", "depends_on": ["bad"]},
        {"ref": "anyway", "task_type": "gather", "depends_on": ["bad"], "on_parent_failure": "run"},
    ]})
    view = await _wait(api, created["workflow_id"])
    assert view["status"] == "failed"
    assert view["tasks"]["after"]["status"] == "cancelled" and view["tasks"]["anyway"]["status"] == "completed"
    after = await api.get(created["tasks"]["after"]["task_id"])
    assert after["error"]["code"] == "dependency_failed"
    [hit] = await receiver.wait_for("wf-failed")
    assert hit.json["status"] == "failed"


async def test_cycles_dangling_and_duplicate_refs_are_422s_naming_them(api: ApiClient) -> None:
    kb = f"kb_refused_{time.time_ns()}"
    status, body = await api.call("POST", "/api/v1/workflows", json={"tasks": [
        {"ref": "a", "task_type": "echo", "kb_id": kb, "depends_on": ["c"]},
        {"ref": "b", "task_type": "echo", "kb_id": kb, "depends_on": ["a"]},
        {"ref": "c", "task_type": "echo", "kb_id": kb, "depends_on": ["b"]},
        {"ref": "free", "task_type": "echo", "kb_id": kb},
    ]})
    assert status == 422, body
    [problem] = body["error"]["details"]
    assert problem["field"] == "tasks.0.depends_on" and "a -> c -> b -> a" in problem["message"]

    status, body = await api.call("POST", "/api/v1/workflows", json={"tasks": [
        {"ref": "a", "task_type": "echo", "kb_id": kb, "depends_on": ["ghost"]},
        {"ref": "a", "task_type": "echo", "kb_id": kb},
    ]})
    assert status == 422
    fields = {d["field"]: d["message"] for d in body["error"]["details"]}
    assert "ghost" in fields["tasks.0.depends_on.0"] and "tasks.1.ref" in fields

    status, body = await api.call("POST", "/api/v1/workflows", json={"tasks": [
        {"ref": "ok", "task_type": "echo", "kb_id": kb},
        {"ref": "a", "task_type": "sleep", "kb_id": kb, "payload": {"seconds": -1}}]})
    assert status == 422 and body["error"]["details"][0]["field"] == "tasks.1.payload.seconds"

    status, page = await api.call("GET", f"/api/v1/tasks?kb_id={kb}&limit=5")
    assert status == 200 and page["items"] == []  # nothing of the refused workflows was created


async def test_deleting_a_workflow_cancels_every_unfinished_task(api: ApiClient, receiver: CallbackReceiver) -> None:
    created = await _create(api, {"callback_url": receiver.url("wf-cancelled"), "tasks": [
        {"ref": "quick", "task_type": "echo"},
        {"ref": "slow", "task_type": "sleep", "payload": {"seconds": 30}},
        {"ref": "next", "task_type": "echo", "depends_on": ["slow"]},
        {"ref": "last", "task_type": "gather", "depends_on": ["next", "quick"]},
    ]})
    await api.wait_for(created["tasks"]["slow"]["task_id"], {"processing"}, timeout=10)
    await api.wait_for(created["tasks"]["quick"]["task_id"])
    status, body = await api.call("DELETE", f"/api/v1/workflows/{created['workflow_id']}")
    assert status == 202 and body["cancel_requested"] is True, body
    view = await _wait(api, created["workflow_id"], timeout=15)
    assert view["status"] == "cancelled"
    assert {ref: t["status"] for ref, t in view["tasks"].items()} == {
        "quick": "completed", "slow": "cancelled", "next": "cancelled", "last": "cancelled"}
    assert (await api.get(created["tasks"]["last"]["task_id"]))["started_at"] is None
    [hit] = await receiver.wait_for("wf-cancelled")
    assert hit.json["status"] == "cancelled"
    status, body = await api.call("DELETE", f"/api/v1/workflows/{created['workflow_id']}")
    assert status == 409


async def test_an_unknown_workflow_is_404(api: ApiClient) -> None:
    status, body = await api.call("GET", "/api/v1/workflows/0190a8c4-0000-7000-8000-000000000000")
    assert status == 404 and body["error"]["code"] == "not_found"


async def test_fan_out_of_a_thousand(api: ApiClient) -> None:
    tasks = [{"ref": "root", "task_type": "sleep", "payload": {"seconds": 0.2}}]
    tasks += [{"ref": f"c{i}", "task_type": "echo", "payload": {"i": i}, "depends_on": ["root"]} for i in range(1000)]
    created = await _create(api, {"tasks": tasks})
    assert sum(1 for t in created["tasks"].values() if t["status"] == "waiting") == 1000
    view = await _wait(api, created["workflow_id"], timeout=180)
    assert view["status"] == "completed" and view["counts"] == {"completed": 1001}


async def test_fan_in_of_a_thousand(api: ApiClient) -> None:
    tasks = [{"ref": f"p{i}", "task_type": "echo", "payload": {"i": i}} for i in range(1000)]
    tasks.append({"ref": "join", "task_type": "gather", "depends_on": [f"p{i}" for i in range(1000)]})
    created = await _create(api, {"tasks": tasks})
    view = await _wait(api, created["workflow_id"], timeout=180)
    assert view["status"] == "completed" and view["counts"] == {"completed": 1001}
    join = await api.get(created["tasks"]["join"]["task_id"])
    assert join["result"]["parents"] == 1000 and join["result"]["completed"] == 1000
    assert join["result"]["results"][created["tasks"]["p7"]["task_id"]] == {"i": 7}


async def test_the_same_idempotency_key_answers_the_same_workflow(api: ApiClient) -> None:
    body = {"tasks": [{"ref": "a", "task_type": "echo"}, {"ref": "b", "task_type": "gather", "depends_on": ["a"]}]}
    headers = {"Idempotency-Key": f"wf-{time.time_ns()}"}
    status, first = await api.call("POST", "/api/v1/workflows", json=body, headers=headers)
    assert status == 201, first
    status, again = await api.call("POST", "/api/v1/workflows", json=body, headers=headers)
    assert status == 200 and again["workflow_id"] == first["workflow_id"]
    assert again["tasks"]["b"]["task_id"] == first["tasks"]["b"]["task_id"]
    assert (await _wait(api, first["workflow_id"]))["status"] == "completed"


async def test_a_workflow_over_tm_submit(fleet: Fleet, api: ApiClient) -> None:
    body = orjson.dumps({"tasks": [
        {"ref": "a", "task_type": "echo", "payload": {"v": 1}},
        {"ref": "b", "task_type": "gather", "depends_on": ["a"]}]})
    connection = await aio_pika.connect(fleet.environment.amqp_url)
    async with connection:
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True)
        answers: asyncio.Queue[Any] = asyncio.Queue()

        async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            answers.put_nowait(orjson.loads(message.body))
        await replies.consume(on_reply, no_ack=True)
        message_id = f"wf-amqp-{time.time_ns()}"
        for _ in range(2):  # re-sent with the same message_id: one workflow
            await channel.default_exchange.publish(aio_pika.Message(
                body, type="workflow", message_id=message_id, reply_to=replies.name, correlation_id="c"),
                routing_key=SUBMIT_QUEUE)
        # Both are handled at once; either may be answered first.
        first, again = sorted([await asyncio.wait_for(answers.get(), 10) for _ in range(2)],
                              key=lambda answer: not answer.get("created"))
    assert first["ok"] and first["created"] is True, first
    assert again["ok"] and again["created"] is False and again["workflow_id"] == first["workflow_id"], again
    view = await _wait(api, first["workflow_id"])
    assert view["status"] == "completed"
    b = await api.get(first["tasks"]["b"]["task_id"])
    assert b["result"]["results"] == {first["tasks"]["a"]["task_id"]: {"v": 1}}


async def test_the_task_list_filters_by_workflow(api: ApiClient) -> None:
    created = await _create(api, {"tasks": [
        {"ref": "a", "task_type": "echo", "payload": {"n": 1}},
        {"ref": "b", "task_type": "echo", "payload": {"n": 2}, "depends_on": ["a"]},
    ]})
    await api.submit({"task_type": "echo", "payload": {"outside": True}})
    status, page = await api.call("GET", f"/api/v1/tasks?workflow_id={created['workflow_id']}")
    assert status == 200, page
    assert {t["task_id"] for t in page["items"]} == {t["task_id"] for t in created["tasks"].values()}
    assert all("payload" not in t for t in page["items"])  # lists leave payloads out
    status, page = await api.call("GET", "/api/v1/tasks?workflow_id=01a20000-0000-7000-8000-000000000000")
    assert (status, page["items"]) == (200, [])
    status, refused = await api.call("GET", "/api/v1/tasks?workflow_id=not-a-uuid")
    assert status == 422 and refused["error"]["details"][0]["field"] == "workflow_id"
