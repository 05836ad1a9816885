"""An aiohttp server on 127.0.0.1 that a test starts and stops: the base of
the stand-ins for services outside the fleet (callback receiver, embeddings)."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from tests.support.environment import free_port


@dataclass
class LoopbackServer:
    port: int = field(default_factory=free_port)
    _runner: web.AppRunner | None = field(default=None, repr=False)

    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application()
        self.add_routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
