"""`GET /api/v1/events`: task events as Server-Sent Events (decision 0131).

Filters narrow the stream; the caller's API key narrows it to its knowledge
bases, as for every read. `Last-Event-ID` (or `last_event_id`) resumes after
that event from the event log, within EVENT_LOG_RETENTION; an id older than
that gets a `stream.reset` event first. An idle stream carries a heartbeat
comment every EVENT_STREAM_HEARTBEAT. A client that falls more than
EVENT_STREAM_BUFFER events behind gets a final `stream.closed` event (with the
last id it was sent, to resume from) and the connection ends.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.api.auth import principal_of
from services.api.event_feed import EventFeed, EventFilter, Position, Subscription, parse_position
from services.api.openapi import Operation, documented
from services.api.resources import EVENT_FEED, SETTINGS
from shared import metrics
from shared.errors import InvalidRequest
from shared.task_request import KB_ID_PATTERN, field_errors

routes = web.RouteTableDef()

RECONNECT_MILLIS = 2000
FINAL_WRITE_SECONDS = 2.0
# A closed slow client's last bytes get this long to leave before the socket is dropped.
LINGER_SECONDS = 30.0


class EventQuery(BaseModel):
    """The query of `GET /api/v1/events`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kb_id: str | None = Field(default=None, pattern=KB_ID_PATTERN)
    task_id: str | None = Field(default=None, pattern=r"^[0-9A-Fa-f]{8}-?([0-9A-Fa-f]{4}-?){3}[0-9A-Fa-f]{12}$")
    task_type: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    last_event_id: str | None = Field(default=None, pattern=r"^[0-9]{1,19}$", description=(
        "Resume after this event (as the Last-Event-ID header); `0`: from the start of the window."))


def _query_doc(_: object) -> dict[str, object]:
    return EventQuery.model_json_schema()


async def end_streams_on_shutdown(app: web.Application) -> None:
    """Open streams would hold the api's graceful stop for its whole grace period."""
    if EVENT_FEED in app:
        app[EVENT_FEED].end_all("server_shutdown")


def _frame(event: str, data: dict[str, object]) -> bytes:
    return f"event: {event}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"


@routes.get("/api/v1/events")
@documented(Operation(
    summary="Stream task events (Server-Sent Events)",
    description="`text/event-stream` of `task.<kind>` events (`data` is the event as published on `tm.events`), "
                "`id` resumable with `Last-Event-ID`; `stream.reset` when the id is older than the window, "
                "`stream.closed` before the server ends a stream (`reason`: `slow_client`).",
    tag="events", query=_query_doc, media_type="text/event-stream", errors=(422, 503),
    headers={"Last-Event-ID": ("Resume after this event.", {"type": "string", "pattern": "^[0-9]{1,19}$"})},
    responses={200: (None, "The stream.")},
))
async def stream_events(request: web.Request) -> web.StreamResponse:
    try:
        query = EventQuery.model_validate(dict(request.rel_url.query))
    except ValidationError as exc:
        raise InvalidRequest("invalid query", field_errors(exc)) from None
    raw_last = request.headers.get("Last-Event-ID") or query.last_event_id
    last = parse_position(raw_last) if raw_last else None
    event_filter = EventFilter(kb_id=query.kb_id, task_id=query.task_id.lower() if query.task_id else None,
                               task_type=query.task_type, scope=principal_of(request).kb_ids)
    feed = request.app[EVENT_FEED]
    sub = await feed.subscribe(event_filter)
    metrics.event_streams_open.inc()
    reason = "client_gone"
    try:
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            await response.prepare(request)
            await response.write(f"retry: {RECONNECT_MILLIS}\n: stream open\n\n".encode())
        except ConnectionError:
            return response  # gone before the first byte (a console switching views): nothing to say
        sent = last
        if last is not None:
            sent = await _send_backlog(response, feed, sub, last)
        reason = await _send_live(request, response, sub, sent)
        return response
    finally:
        feed.unsubscribe(sub)
        metrics.event_streams_open.dec()
        metrics.event_streams_closed_total.labels(reason).inc()


async def _send_backlog(response: web.StreamResponse, feed: EventFeed, sub: Subscription,
                        last: Position) -> Position:
    """Everything after `last` up to where the live feed took over; the writes
    wait for the client, so a long backlog costs time, not memory."""
    if not await feed.still_held(last):
        await response.write(_frame("stream.reset", {
            "reason": "outside_window", "last_event_id": str(last),
            "message": "events after this id are older than the replay window (EVENT_LOG_RETENTION) and were "
                       "dropped; read the current state with GET /api/v1/tasks",
        }))
        last = sub.start
    while last < sub.start:
        page = await feed.backlog(sub.filter, last, sub.start)
        for event in page:
            await response.write(event.frame)
        if not page:
            break
        last = page[-1].position
    return last


async def _send_live(request: web.Request, response: web.StreamResponse, sub: Subscription,
                     sent: Position | None) -> str:
    heartbeat = request.app[SETTINGS].events.heartbeat_seconds
    last_sent = [sent]

    async def pump() -> None:
        # The server ends the stream by cancelling this (a write may be blocked on
        # the client) and by the flag (a cancel may land just as `get` returns).
        while not sub.overflowed:
            try:
                # asyncio.timeout, not wait_for: wait_for may swallow a cancel that races a result (3.11).
                async with asyncio.timeout(heartbeat):
                    event = await sub.queue.get()
            except TimeoutError:
                await response.write(b": heartbeat\n\n")
                continue
            if sub.overflowed:
                break
            await response.write(event.frame)
            last_sent[0] = event.position

    task = asyncio.ensure_future(pump())
    sub.on_overflow = task.cancel
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if not sub.overflowed or (current is not None and current.cancelling()):
            raise
    except (ConnectionResetError, ConnectionError):
        return "client_gone"
    if sub.overflowed:
        if sub.ended_by_server == "slow_client":
            await _close_slow(request, response, last_sent[0])
        else:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(response.write(_frame("stream.closed", {
                    "reason": sub.ended_by_server, "last_event_id": str(last_sent[0]) if last_sent[0] is not None else None,
                    "message": "the server is shutting down; reconnect with Last-Event-ID to resume"})),
                    FINAL_WRITE_SECONDS)
        return sub.ended_by_server or "slow_client"
    return "client_gone"


async def _close_slow(request: web.Request, response: web.StreamResponse, last: Position | None) -> None:
    buffer = request.app[SETTINGS].events.buffer
    final = _frame("stream.closed", {
        "reason": "slow_client", "last_event_id": str(last) if last is not None else None,
        "message": f"the client fell more than {buffer} events behind (EVENT_STREAM_BUFFER); reconnect with "
                   "Last-Event-ID to resume from the last event it was sent",
    })
    with contextlib.suppress(Exception):
        await asyncio.wait_for(response.write(final), FINAL_WRITE_SECONDS)
    transport = request.transport
    if transport is not None:
        # close() sends what is buffered first; a client that never reads is cut off later.
        transport.close()
        asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.abort)
