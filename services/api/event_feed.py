"""The api's side of the event stream: read new task events from the event log
(`task_events`, written by the dispatcher) and hand each to the streams that
want it (decision 0131).

One reader per api process, running only while a stream is open: a query
every EVENT_STREAM_POLL for rows after the last `seq` read. The dispatcher's
appends are serialised by a table lock held to their commit, so a row never
becomes visible below a seq already read: the ids a stream sends only rise,
and `Last-Event-ID` resumes exactly where it stopped.

Each stream has a bounded queue. A stream whose queue is full is dropped from
the feed and told why, so a slow client costs at most its buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.api.task_repository import KbScope
from shared.errors import FieldError, InvalidRequest, Unavailable
from shared.runtime import stop_task

READ_BATCH = 1000
BACKLOG_PAGE = 500

_COLUMNS = "seq, CAST(task_id AS text) AS task_id, kind, task_type, kb_id, CAST(data AS text) AS data"

_NEW = text(f"SELECT {_COLUMNS} FROM task_events WHERE seq > :after ORDER BY seq LIMIT :limit")
_HEAD = text("SELECT COALESCE(max(seq), 0) AS seq FROM task_events")
_EXISTS = text("SELECT 1 FROM task_events WHERE seq = :seq")

# Where a stream stands in the event log: the seq of the last event it was sent.
Position = int
START: Position = 0


def parse_position(raw: str) -> Position:
    """An event's `id:` as sent back in `Last-Event-ID`; `0` is the start of the window."""
    raw = raw.strip()
    if not raw.isdigit() or len(raw) > 19:
        raise InvalidRequest("invalid Last-Event-ID", [FieldError(
            "Last-Event-ID", "must be the id of an event this stream sent (or 0 for the start of the window)")])
    return int(raw)


@dataclass(frozen=True)
class EventFilter:
    """What one stream wants; `scope` is the caller's knowledge bases (None: all)."""

    kb_id: str | None = None
    task_id: str | None = None
    task_type: str | None = None
    scope: KbScope = None

    def matches(self, event: StreamEvent) -> bool:
        if self.scope is not None and event.kb_id not in self.scope:
            return False
        return ((self.kb_id is None or event.kb_id == self.kb_id)
                and (self.task_id is None or event.task_id == self.task_id)
                and (self.task_type is None or event.task_type == self.task_type))

    def where(self) -> tuple[str, dict[str, Any]]:
        """The same test in SQL, for reading a backlog."""
        clauses, params = [], {}
        for name in ("kb_id", "task_type"):
            value = getattr(self, name)
            if value is not None:
                clauses.append(f"{name} = :{name}")
                params[name] = value
        if self.task_id is not None:
            clauses.append("task_id = CAST(:task_id AS uuid)")
            params["task_id"] = self.task_id
        if self.scope is not None:
            clauses.append("kb_id = ANY(:scope)")
            params["scope"] = sorted(self.scope)
        return "".join(f" AND {c}" for c in clauses), params


@dataclass(frozen=True)
class StreamEvent:
    position: Position
    task_id: str
    kind: str
    task_type: str
    kb_id: str | None
    frame: bytes  # the whole SSE message, encoded once for every stream that sends it

    @classmethod
    def from_row(cls, row: Any) -> StreamEvent:
        position = row.seq
        frame = f"id: {position}\nevent: task.{row.kind}\ndata: {row.data}\n\n".encode()
        return cls(position, row.task_id, row.kind, row.task_type, row.kb_id, frame)


@dataclass(eq=False)
class Subscription:
    filter: EventFilter
    start: Position  # the feed delivers only what comes after this
    queue: asyncio.Queue[StreamEvent]
    on_overflow: Callable[[], object] = lambda: None
    overflowed: bool = False
    ended_by_server: str | None = None  # why the server ends this stream ("slow_client", "server_shutdown")


@dataclass
class _Index:
    """Streams by what they filter on, so an event is tested only against the
    streams that may want it, not against every open stream."""

    by_task: dict[str, set[Subscription]] = field(default_factory=dict)
    by_kb: dict[str, set[Subscription]] = field(default_factory=dict)
    rest: set[Subscription] = field(default_factory=set)

    def _bucket(self, sub: Subscription) -> set[Subscription]:
        if sub.filter.task_id is not None:
            return self.by_task.setdefault(sub.filter.task_id, set())
        if sub.filter.kb_id is not None:
            return self.by_kb.setdefault(sub.filter.kb_id, set())
        return self.rest

    def add(self, sub: Subscription) -> None:
        self._bucket(sub).add(sub)

    def remove(self, sub: Subscription) -> None:
        bucket = self._bucket(sub)
        bucket.discard(sub)
        if not bucket and bucket is not self.rest:
            key = sub.filter.task_id if sub.filter.task_id is not None else sub.filter.kb_id
            (self.by_task if sub.filter.task_id is not None else self.by_kb).pop(key, None)  # type: ignore[arg-type]

    def candidates(self, event: StreamEvent) -> Iterable[Subscription]:
        yield from self.by_task.get(event.task_id, ())
        if event.kb_id is not None:
            yield from self.by_kb.get(event.kb_id, ())
        yield from self.rest


class EventFeed:
    def __init__(self, engine: AsyncEngine, *, poll_seconds: float, buffer: int, max_streams: int) -> None:
        self._engine = engine
        self._poll = poll_seconds
        self._buffer = buffer
        self._max_streams = max_streams
        self._index = _Index()
        self._count = 0
        self._position = START
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def streams(self) -> int:
        return self._count

    async def subscribe(self, event_filter: EventFilter) -> Subscription:
        if self._count >= self._max_streams:
            raise Unavailable(f"this api has {self._count} event streams open, its limit "
                              "(EVENT_STREAM_MAX_CONNECTIONS); retry later", retry_after_seconds=5)
        async with self._lock:
            if self._reader is None or self._reader.done():
                # Idle until now: start from the head of the log, not from where the last stream left it.
                self._position = await self._head()
                self._reader = asyncio.create_task(self._read_forever(), name="event-feed")
            sub = Subscription(event_filter, self._position, asyncio.Queue(self._buffer))
            self._index.add(sub)
            self._count += 1
            return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if not sub.overflowed:
            self._index.remove(sub)
        self._count -= 1

    async def backlog(self, event_filter: EventFilter, after: Position, until: Position) -> list[StreamEvent]:
        """At most BACKLOG_PAGE events of the window in (after, until]; call again from the last one."""
        where, params = event_filter.where()
        query = text(f"SELECT {_COLUMNS} FROM task_events WHERE seq > :after AND seq <= :until{where} "
                     "ORDER BY seq LIMIT :limit")
        async with self._engine.connect() as conn:
            rows = await conn.execute(query, {"after": after, "until": until, "limit": BACKLOG_PAGE, **params})
            return [StreamEvent.from_row(r) for r in rows]

    async def still_held(self, position: Position) -> bool:
        """Whether the log still holds this event (else it is older than the window)."""
        if position == START:
            return True
        async with self._engine.connect() as conn:
            return (await conn.execute(_EXISTS, {"seq": position})).first() is not None

    async def close(self) -> None:
        await stop_task(self._reader, "the event feed")

    async def _head(self) -> Position:
        async with self._engine.connect() as conn:
            return int((await conn.execute(_HEAD)).scalar_one())

    async def _read_forever(self) -> None:
        while self._count:
            try:
                async with self._engine.connect() as conn:
                    rows = (await conn.execute(_NEW, {"after": self._position, "limit": READ_BATCH})).all()
            except Exception as exc:  # noqa: BLE001 - the database may be down; streams wait, heartbeats go on
                logger.warning("could not read new task events: {}", exc)
                await asyncio.sleep(max(self._poll, 1.0))
                continue
            for row in rows:
                self._deliver(StreamEvent.from_row(row))
            if rows:
                self._position = rows[-1].seq
            if len(rows) < READ_BATCH:
                await asyncio.sleep(self._poll)

    def _deliver(self, event: StreamEvent) -> None:
        overflowed = []
        for sub in self._index.candidates(event):
            if event.position <= sub.start or not sub.filter.matches(event):
                continue
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                overflowed.append(sub)
        for sub in overflowed:
            self._end(sub, "slow_client")

    def end_all(self, reason: str) -> None:
        """End every open stream (the api is shutting down)."""
        subs = [*self._index.rest, *(s for b in self._index.by_task.values() for s in b),
                *(s for b in self._index.by_kb.values() for s in b)]
        for sub in subs:
            self._end(sub, reason)

    def _end(self, sub: Subscription, reason: str) -> None:
        self._index.remove(sub)
        sub.overflowed = True
        sub.ended_by_server = reason
        with contextlib.suppress(Exception):
            sub.on_overflow()
