"""`/console`: the operator console, static files shipped in the package
(`services/api/console/`). It holds no data and no secret; everything it shows
comes from the REST API and the event stream, with the key the operator types in
(decision 0140)."""

from __future__ import annotations

from importlib import resources

from aiohttp import web
from aiohttp.typedefs import Handler

from services.api.openapi import Operation, documented

routes = web.RouteTableDef()

# Only the console's own files, from its own origin; no inline script, so a payload that
# slipped past escaping still could not run.
_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
           "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_HEADERS = {"Content-Security-Policy": _POLICY, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}
# path -> (file in services/api/console/, media type, what it is)
_FILES = {
    "/console": ("index.html", "text/html", "The operator console (a page; it reads the API with the key typed in)."),
    "/console/console.js": ("console.js", "text/javascript", "The console's script."),
    "/console/console.css": ("console.css", "text/css", "The console's style sheet."),
    "/console/favicon.svg": ("favicon.svg", "image/svg+xml", "The console's icon."),
}


def _serve(name: str, media_type: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        body = resources.files("services.api").joinpath("console", name).read_bytes()
        return web.Response(body=body, content_type=media_type, charset="utf-8", headers=_HEADERS)
    return handler


for _path, (_name, _media, _summary) in _FILES.items():
    routes.get(_path)(documented(Operation(summary=_summary, tag="console", media_type=_media,
                                           responses={200: (None, "The file.")}))(_serve(_name, _media)))
