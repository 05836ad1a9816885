"""A local HTTP server standing in for the KB service's callback endpoint."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.support.loopback_server import LoopbackServer


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class CallbackReceiver(LoopbackServer):
    """Records every POST. `failures[path] = n` answers 500 to the first n POSTs on that path;
    `redirects[path] = url` answers 302 to `url` (which a sender must not follow)."""

    failures: dict[str, int] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)

    def url(self, path: str = "hook") -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/{path:.*}", self._handle)

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        body = await request.read()
        if path in self.redirects:
            self.received.append(Received(path, dict(request.headers), body, 302, time.monotonic()))
            raise web.HTTPFound(self.redirects[path])
        remaining = self.failures.get(path, 0)
        status = 500 if remaining > 0 else 200
        if remaining > 0:
            self.failures[path] = remaining - 1
        self.received.append(Received(path, dict(request.headers), body, status, time.monotonic()))
        return web.json_response({"ok": status == 200}, status=status)

    def for_path(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def wait_for(self, path: str, *, count: int = 1, ok: bool = True, timeout: float = 30) -> list[Received]:
        deadline = time.monotonic() + timeout
        while True:
            hits = [r for r in self.for_path(path) if not ok or r.status == 200]
            if len(hits) >= count:
                return self.for_path(path)
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} callback(s) on /{path} not received in {timeout}s: {self.for_path(path)}")
            await asyncio.sleep(0.05)
