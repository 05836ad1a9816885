"""Events that finish together travel together (shared/amqp/event_batches.py):
without a broker, against a recording publisher that confirms when told to."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from shared.amqp.event_batches import MAX_EVENTS_PER_MESSAGE, EventBatches
from shared.errors import Unavailable
from shared.messages import ErrorInfo, TaskCompleted, TaskFailed, parse_task_events, utcnow

pytestmark = pytest.mark.fast


class HeldConfirms:
    """Publishes wait for `release()` (the broker's confirm); `refuse` makes the next one fail."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, str | None]] = []
        self.gate = asyncio.Event()
        self.refuse = False

    async def publish_event(self, routing_key: str, body: bytes, *, message_id: str | None = None) -> None:
        self.sent.append((routing_key, body, message_id))
        await self.gate.wait()
        if self.refuse:
            self.refuse = False
            raise Unavailable("the broker refused the message")

    def release(self) -> None:
        self.gate.set()


def _completed(n: int) -> TaskCompleted:
    return TaskCompleted(task_id=f"t{n}", task_type="echo", result={"n": n}, finished_at=utcnow())


async def test_an_event_alone_goes_at_once_as_a_single_event() -> None:
    broker = HeldConfirms()
    broker.release()
    event = _completed(1)
    await EventBatches(broker).event(event)  # type: ignore[arg-type]
    [(key, body, message_id)] = broker.sent
    assert key == "task.completed" and message_id == event.event_id
    assert orjson.loads(body)["v"] == 1 and parse_task_events(body) == [event]


async def test_events_arriving_during_a_confirm_leave_together_and_each_caller_waits_for_its_own() -> None:
    broker = HeldConfirms()
    batches = EventBatches(broker)  # type: ignore[arg-type]
    events = [_completed(n) for n in range(50)]
    callers = [asyncio.create_task(batches.event(events[0]))]
    await asyncio.sleep(0.01)  # the first one is out, waiting for its confirm
    callers += [asyncio.create_task(batches.event(e)) for e in events[1:]]
    await asyncio.sleep(0.01)
    assert len(broker.sent) == 1 and not any(c.done() for c in callers), "nobody returns before the confirm"
    broker.release()
    await asyncio.gather(*callers)
    assert [len(parse_task_events(body)) for _, body, _ in broker.sent] == [1, 49]
    second = broker.sent[1]
    assert second[0] == "task.completed" and orjson.loads(second[1])["v"] == 2
    carried = [e for _, body, _ in broker.sent for e in parse_task_events(body)]
    assert carried == events, "every event once, in order"


async def test_kinds_travel_apart_under_their_own_routing_keys() -> None:
    broker = HeldConfirms()
    batches = EventBatches(broker)  # type: ignore[arg-type]
    failed = TaskFailed(task_id="f", task_type="echo", error=ErrorInfo(type="E", message="m"), finished_at=utcnow())
    broker.release()
    await asyncio.gather(batches.event(_completed(1)), batches.event(failed), batches.event(_completed(2)))
    keys = sorted(key for key, _, _ in broker.sent)
    assert keys == ["task.completed", "task.failed"] or keys == ["task.completed", "task.completed", "task.failed"]
    for key, body, _ in broker.sent:
        assert {e.kind for e in parse_task_events(body)} == {key.removeprefix("task.")}


async def test_a_refused_publish_fails_the_events_it_carried_and_the_next_ones_still_go() -> None:
    broker = HeldConfirms()
    batches = EventBatches(broker)  # type: ignore[arg-type]
    broker.refuse = True
    first = asyncio.create_task(batches.event(_completed(0)))
    await asyncio.sleep(0)
    later = [asyncio.create_task(batches.event(_completed(n))) for n in range(1, 4)]
    await asyncio.sleep(0.01)
    broker.release()
    with pytest.raises(Unavailable):
        await first
    await asyncio.gather(*later)  # the next message was confirmed
    assert len(broker.sent) == 2


async def test_a_message_holds_at_most_its_limit_of_events() -> None:
    broker = HeldConfirms()
    batches = EventBatches(broker)  # type: ignore[arg-type]
    callers = [asyncio.create_task(batches.event(_completed(n))) for n in range(MAX_EVENTS_PER_MESSAGE * 2 + 1)]
    await asyncio.sleep(0.01)  # all of them arrived in one turn of the loop
    broker.release()
    await asyncio.gather(*callers)
    sizes = [len(parse_task_events(body)) for _, body, _ in broker.sent]
    assert sizes == [MAX_EVENTS_PER_MESSAGE, MAX_EVENTS_PER_MESSAGE, 1], sizes
