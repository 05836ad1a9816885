"""Server-Sent Events, parsed as a browser's EventSource does."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp

from tmclient.models import TaskEvent


async def read_events(response: aiohttp.ClientResponse) -> AsyncIterator[TaskEvent]:
    """Each message with JSON data; comments (heartbeats) and the rest are skipped."""
    event, data, event_id = "message", [], None
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith(":"):
            continue
        if not line:
            if data:
                try:
                    body = json.loads("\n".join(data))
                except ValueError:
                    body = None
                if isinstance(body, dict):
                    yield TaskEvent(id=event_id, event=event, data=body)
            event, data = "message", []
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value
