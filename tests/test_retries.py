"""Retries through the TTL delay queues, permanent failures, dead letters."""

from __future__ import annotations

import aio_pika

from shared.amqp import headers as h
from shared.amqp.publisher import Publisher
from shared.ids import new_task_id
from shared.messages import TaskMessage, utcnow
from shared.topology import DEAD_QUEUE, RETRY_TIERS
from tests.support.api import ApiClient
from tests.support.fleet import Fleet


async def test_a_task_that_fails_twice_completes_on_its_third_attempt(api: ApiClient) -> None:
    task = await api.run({"task_type": "fail", "payload": {"fail_times": 2}}, timeout=30)
    assert task["status"] == "completed"
    assert task["attempts"] == 3
    assert task["result"] == {"succeeded_on_attempt": 3}
    assert "attempt 2" in task["error"]["message"], "the last error stays visible"


async def test_a_permanent_error_fails_at_once_without_retry(api: ApiClient) -> None:
    task = await api.run({"task_type": "fail", "payload": {"permanent": True, "message": "bad input file"}})
    assert task["status"] == "failed"
    assert task["attempts"] == 1
    assert task["error"]["message"] == "bad input file"
    assert task["error"]["retryable"] is False


async def test_a_task_that_keeps_failing_ends_failed_and_dead_lettered(api: ApiClient, fleet: Fleet) -> None:
    task = await api.run({"task_type": "fail", "retry_limit": 1, "payload": {"fail_times": 5}}, timeout=30)
    assert task["status"] == "failed"
    assert task["attempts"] == 2
    assert "retries exhausted" in task["error"]["message"]

    connection = await aio_pika.connect(fleet.environment.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(DEAD_QUEUE, passive=True)
        found = None  # messages read here stay unacked and return to the queue on close
        while (message := await queue.get(no_ack=False, fail=False)) is not None:
            if task["task_id"].encode() in message.body:
                found = message
                break
        assert found is not None, "the task is in tm.dead"
        assert "retries exhausted" in found.headers[h.DEAD_REASON]
        assert found.headers[h.DEAD_STAGE] == "default"
        assert found.headers[h.ATTEMPT] == 2
        assert found.headers[h.FIRST_FAILURE_AT] and found.headers[h.LAST_FAILURE_AT]
        assert "failing on purpose" in found.headers[h.LAST_ERROR]


async def test_a_timed_out_attempt_is_retried_then_fails(api: ApiClient) -> None:
    task = await api.run(
        {"task_type": "sleep", "payload": {"seconds": 5}, "timeout_seconds": 0.3, "retry_limit": 1}, timeout=30
    )
    assert task["status"] == "failed"
    assert task["attempts"] == 2
    assert "time limit" in task["error"]["message"]


async def test_a_retry_waits_in_exactly_one_delay_tier(fleet: Fleet) -> None:
    """A headers-exchange binding on an `x-` header would match every message:
    the retry would then wait in every tier and run once per tier."""
    task = TaskMessage(task_id=new_task_id(), task_type="echo", retry_limit=1, created_at=utcnow())
    tier = RETRY_TIERS[-1]
    connection = await aio_pika.connect(fleet.environment.amqp_url)
    async with connection:
        channel = await connection.channel()

        async def depths() -> dict[str, int]:
            return {t.queue: (await channel.declare_queue(t.queue, passive=True)).declaration_result.message_count
                    for t in RETRY_TIERS}

        before = await depths()
        publisher = await Publisher.open(connection)
        await publisher.retry(task, tier, headers={h.ATTEMPT: 2})
        after = await depths()
        assert {q: after[q] - before[q] for q in after} == {t.queue: int(t is tier) for t in RETRY_TIERS}
        # Take it back out: nothing of this test is left for an hour.
        queue = await channel.declare_queue(tier.queue, passive=True)
        while (message := await queue.get(no_ack=False, fail=False)) is not None:
            if task.task_id.encode() in message.body:
                await message.ack()
                break


async def test_declaring_the_topology_removes_the_legacy_match_everything_binding(fleet: Fleet) -> None:
    from shared.task_types import default_registry
    from shared.topology import LEGACY_BINDINGS, Topology, declare_topology

    connection = await aio_pika.connect(fleet.environment.amqp_url)
    async with connection:
        channel = await connection.channel()
        queue_name, legacy = LEGACY_BINDINGS[0]
        queue = await channel.declare_queue(queue_name, passive=True)
        await queue.bind(legacy.exchange, routing_key="", arguments=dict(legacy.arguments))
        await declare_topology(channel, Topology(default_registry(demo=True).stages()))

        async def depths() -> dict[str, int]:
            return {t.queue: (await channel.declare_queue(t.queue, passive=True)).declaration_result.message_count
                    for t in RETRY_TIERS}

        before = await depths()
        task = TaskMessage(task_id=new_task_id(), task_type="echo", retry_limit=1, created_at=utcnow())
        publisher = await Publisher.open(connection)
        await publisher.retry(task, RETRY_TIERS[-1], headers={h.ATTEMPT: 2})
        after = await depths()
        assert {q: after[q] - before[q] for q in after} == {t.queue: int(t is RETRY_TIERS[-1]) for t in RETRY_TIERS}
        parked = await channel.declare_queue(RETRY_TIERS[-1].queue, passive=True)
        while (message := await parked.get(no_ack=False, fail=False)) is not None:
            if task.task_id.encode() in message.body:
                await message.ack()
                break
