"""The framework's limit on this machine: an aiohttp app whose one handler
does nothing, run the way the api runs (uvloop, no access log).

`python -m bench.bare_server PORT`
"""

from __future__ import annotations

import sys

from aiohttp import web


async def accept(_: web.Request) -> web.Response:
    return web.Response(status=201, body=b'{"status":"queued"}', content_type="application/json")


async def ready(_: web.Request) -> web.Response:
    return web.Response(body=b"ready")


def main() -> None:
    import uvloop

    app = web.Application()
    app.add_routes([web.post("/api/v1/tasks", accept), web.get("/health/ready", ready)])
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
