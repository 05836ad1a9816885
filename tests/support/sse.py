"""Reading a Server-Sent Events stream the way a browser's EventSource does."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Self

import aiohttp


@dataclass(frozen=True)
class Sse:
    event: str
    data: str
    id: str | None
    comment: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


async def read_sse(response: aiohttp.ClientResponse) -> AsyncIterator[Sse]:
    """Each message, and each comment line as its own Sse(event="comment")."""
    event, data, event_id = "message", [], None
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith(":"):
            yield Sse("comment", "", None, line[1:].strip())
        elif not line:
            if data:
                yield Sse(event, "\n".join(data), event_id)
            event, data = "message", []
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                event_id = value


class EventStream:
    """One open stream, collecting what it receives in the background."""

    def __init__(self, http: aiohttp.ClientSession, url: str, **kwargs: Any) -> None:
        self._http, self._url, self._kwargs = http, url, kwargs
        self.received: list[Sse] = []
        self.status: int | None = None
        self.ended = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._opened = asyncio.Event()

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._opened.wait(), 30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        try:
            async with self._http.get(self._url, timeout=aiohttp.ClientTimeout(total=None),
                                      **self._kwargs) as response:
                self.status = response.status
                self._opened.set()
                if response.status != 200:
                    return
                async for message in read_sse(response):
                    self.received.append(message)
        except aiohttp.ClientError:
            pass
        finally:
            self._opened.set()
            self.ended.set()

    def events(self, kind: str | None = None) -> list[Sse]:
        return [m for m in self.received if m.event != "comment" and (kind is None or m.event == kind)]

    async def wait_for(self, found: Callable[[Sse], bool], timeout: float = 30) -> Sse:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for message in self.received:
                if found(message):
                    return message
            if self.ended.is_set() or asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no such event in {self.received!r}")
            await asyncio.sleep(0.05)
