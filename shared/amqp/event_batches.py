"""Task events that finish together travel together (decision 0180).

A worker under load ends many attempts at nearly the same moment. Each of
their events used to be its own persistent, confirmed message: a publish, a
confirm, a routing and a delivery each. `EventBatches` keeps one publish in
flight per event kind; whatever events of that kind arrive while it waits for
its confirm leave together in the next message (`TaskEventBatch`, v2, under
the kind's routing key). An idle worker therefore publishes at once, and a
busy one in batches that grow with the load: no timer, no added latency.

Every caller still waits for the confirm of the message that carries its
event, so "published before the ack" holds event by event; a refused publish
fails every event it carried, and each caller retries its own.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from shared.amqp.publisher import Publisher
from shared.errors import Unavailable
from shared.messages import _TaskEvent, task_event_batch_body

MAX_EVENTS_PER_MESSAGE = 200
MAX_BYTES_PER_MESSAGE = 256 * 1024


@dataclass(frozen=True)
class _Pending:
    body: bytes
    event_id: str
    done: asyncio.Future[None]


@dataclass
class _Kind:
    waiting: list[_Pending] = field(default_factory=list)
    sending: bool = False


class EventBatches:
    """An `EventPublisher` that joins events of one kind published close together."""

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self._kinds: dict[str, _Kind] = {}
        self._senders: set[asyncio.Task[None]] = set()

    async def event(self, event: _TaskEvent) -> None:
        kind_name: str = event.kind  # type: ignore[attr-defined]
        kind = self._kinds.setdefault(kind_name, _Kind())
        pending = _Pending(event.model_dump_json().encode(), event.event_id,
                           asyncio.get_running_loop().create_future())
        kind.waiting.append(pending)
        if not kind.sending:
            kind.sending = True
            sender = asyncio.create_task(self._send(event.routing_key, kind), name=f"events-{kind_name}")
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)
        # Shielded: a caller cancelled while waiting must not cancel its neighbours' publish.
        await asyncio.shield(pending.done)

    async def _send(self, routing_key: str, kind: _Kind) -> None:
        try:
            while kind.waiting:
                count = _fitting(kind.waiting)
                batch, kind.waiting = kind.waiting[:count], kind.waiting[count:]
                try:
                    if count == 1:
                        await self._publisher.publish_event(routing_key, batch[0].body, message_id=batch[0].event_id)
                    else:
                        await self._publisher.publish_event(routing_key,
                                                            task_event_batch_body([p.body for p in batch]))
                except BaseException as exc:
                    _settle(batch, exc)  # each caller retries its own event
                    if not isinstance(exc, Exception):
                        raise
                else:
                    _settle(batch, None)
        finally:
            kind.sending = False
            _settle(kind.waiting, Unavailable("stopping: the event was not published"))
            kind.waiting = []


def _settle(batch: list[_Pending], error: BaseException | None) -> None:
    for pending in batch:
        if pending.done.done():
            continue
        if error is None:
            pending.done.set_result(None)
        else:
            pending.done.set_exception(error)


def _fitting(waiting: list[_Pending]) -> int:
    """How many of the waiting events go in the next message (at least one)."""
    size = 0
    for count, pending in enumerate(waiting[:MAX_EVENTS_PER_MESSAGE]):
        size += len(pending.body) + 1
        if size > MAX_BYTES_PER_MESSAGE and count:
            return count
    return min(len(waiting), MAX_EVENTS_PER_MESSAGE)
