"""Callbacks to the KB service: sent after the state committed, signed, retried."""

from __future__ import annotations

import asyncio
import uuid

from shared.webhooks import verify
from tests.conftest import CALLBACK_SECRET
from tests.support.api import ApiClient
from tests.support.callback_receiver import CallbackReceiver


async def test_a_completed_task_posts_a_signed_callback(api: ApiClient, receiver: CallbackReceiver) -> None:
    path = f"ok-{uuid.uuid4().hex[:6]}"
    task = await api.run({"task_type": "test", "kb_id": "kb_1", "payload": {"message": "hi"},
                          "callback_url": receiver.url(path)})
    [hit] = await receiver.wait_for(path)
    verify([CALLBACK_SECRET], hit.headers, hit.body)
    assert hit.json == {
        "task_id": task["task_id"], "kb_id": "kb_1", "task_type": "test", "status": "completed",
        "result": {"message": "hi"}, "finished_at": hit.json["finished_at"],
    }
    assert hit.headers["webhook-id"]
    delivered = await api.wait_for_callback(task["task_id"], "delivered")
    assert delivered["callback"]["attempts"] == 1


async def test_a_failed_task_posts_its_error(api: ApiClient, receiver: CallbackReceiver) -> None:
    path = f"fail-{uuid.uuid4().hex[:6]}"
    task = await api.run({"task_type": "fail", "payload": {"permanent": True}, "callback_url": receiver.url(path)})
    [hit] = await receiver.wait_for(path)
    assert hit.json["status"] == "failed" and hit.json["error"]["message"] == "failing on purpose"
    assert "result" not in hit.json
    assert task["status"] == "failed"


async def test_a_callback_answered_500_is_retried_until_delivered(api: ApiClient, receiver: CallbackReceiver) -> None:
    path = f"flaky-{uuid.uuid4().hex[:6]}"
    receiver.failures[path] = 2
    task = await api.run({"task_type": "echo", "callback_url": receiver.url(path)})
    hits = await receiver.wait_for(path, timeout=30)
    assert [h.status for h in hits] == [500, 500, 200]
    assert len({h.headers["webhook-id"] for h in hits}) == 1, "retries keep the id the receiver dedupes on"
    for hit in hits:
        verify([CALLBACK_SECRET], hit.headers, hit.body)
    view = await api.wait_for_callback(task["task_id"], "delivered")
    assert view["callback"] == {"state": "delivered", "attempts": 3, "last_error": None}


async def test_a_callback_is_sent_once_per_task(api: ApiClient, receiver: CallbackReceiver) -> None:
    path = f"once-{uuid.uuid4().hex[:6]}"
    ids = [(await api.submit({"task_type": "benchmark", "callback_url": receiver.url(path)}))["task_id"]
           for _ in range(20)]
    await receiver.wait_for(path, count=20)
    await asyncio.sleep(1)
    assert sorted(h.json["task_id"] for h in receiver.for_path(path)) == sorted(ids)
