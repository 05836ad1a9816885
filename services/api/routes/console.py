"""`/console`: the operator console, static files shipped in the package
(`services/api/console/`). It holds no data and no secret; everything it shows
comes from the REST API and the event stream, with the key the operator types in
(decision 0140)."""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from services.api.openapi import Operation, documented
from shared.errors import NotFound

routes = web.RouteTableDef()

_ASSETS = {"console.js": "text/javascript", "console.css": "text/css", "favicon.svg": "image/svg+xml"}
# Only the console's own files, from its own origin; no inline script, so a payload that
# slipped past escaping still could not run.
_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
           "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_HEADERS = {"Content-Security-Policy": _POLICY, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def _read(name: str) -> bytes:
    return resources.files("services.api").joinpath("console", name).read_bytes()


@routes.get("/console")
@documented(Operation(summary="The operator console (a page)", tag="console", media_type="text/html",
                      responses={200: (None, "HTML; it reads the API with the key typed into it.")}))
async def console_page(request: web.Request) -> web.Response:
    return web.Response(body=_read("index.html"), content_type="text/html", charset="utf-8", headers=_HEADERS)


@routes.get("/console/{asset}")
@documented(Operation(summary="The console's script and style sheet", tag="console", media_type="text/plain",
                      path={"asset": {"type": "string", "enum": sorted(_ASSETS)}}, errors=(404,),
                      responses={200: (None, "The file.")}))
async def console_asset(request: web.Request) -> web.Response:
    name = request.match_info["asset"]
    if name not in _ASSETS:
        raise NotFound(f"the console has no file {name!r}")
    return web.Response(body=_read(name), content_type=_ASSETS[name], charset="utf-8", headers=_HEADERS)
