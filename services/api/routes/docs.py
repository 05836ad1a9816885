"""`/api/v1/openapi.json` (the contract, generated from the app),
`/api/v1/asyncapi.json` (the AMQP contract) and
`/api/v1/docs` (that contract in Swagger UI, an interactive reference). Swagger UI's
files come from the swagger-ui-py package and are served by the api itself, so the
page works offline and loads nothing from another origin (decision 0190)."""

from __future__ import annotations

from importlib import resources, util
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from services.api.asyncapi import build_asyncapi
from services.api.openapi import DocContext, Operation, build_openapi, documented
from services.api.resources import REGISTRY, SETTINGS

routes = web.RouteTableDef()
OPENAPI_DOCUMENT = web.AppKey("openapi_document", dict)
ASYNCAPI_DOCUMENT = web.AppKey("asyncapi_document", dict)


def document(app: web.Application) -> dict[str, Any]:
    if OPENAPI_DOCUMENT not in app:
        app[OPENAPI_DOCUMENT] = build_openapi(app, DocContext(app[SETTINGS], app[REGISTRY]))
    return app[OPENAPI_DOCUMENT]


@routes.get("/api/v1/openapi.json")
@documented(Operation(summary="This document (OpenAPI 3.1)", tag="operations",
                      responses={200: (None, "The OpenAPI document.")}))
async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(document(request.app))


@routes.get("/api/v1/asyncapi.json")
@documented(Operation(summary="The AMQP contract (AsyncAPI 3.0): tm.submit, its replies, tm.events",
                      tag="operations", responses={200: (None, "The AsyncAPI document.")}))
async def asyncapi_json(request: web.Request) -> web.Response:
    if ASYNCAPI_DOCUMENT not in request.app:
        request.app[ASYNCAPI_DOCUMENT] = build_asyncapi(request.app[SETTINGS])
    return web.json_response(request.app[ASYNCAPI_DOCUMENT])


# Only this origin's files; no inline script or style. `data:` images: Swagger UI's style
# sheet draws its icons as data: URIs. connect-src 'self': the contract and "Try it out".
_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
           "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_HEADERS = {"Content-Security-Policy": _POLICY, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def _swagger_ui_dist() -> Path:
    # The package's folder, found without importing it (its __init__ loads framework glue we
    # do not use); its static/ folder is Swagger UI's dist, with Swagger UI's LICENSE.
    spec = util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("swagger-ui-py is not installed (it is a dependency in pyproject.toml)")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


# path -> (where the file is, media type, what it is). One route per file, like the console's:
# each answers with one media type, which the contract states.
_OWN = resources.files("services.api").joinpath("api_reference")
_FILES: dict[str, tuple[Any, str, str]] = {
    "/api/v1/docs": (_OWN / "index.html", "text/html", "This contract in Swagger UI: an interactive reference (a page)"),
    "/api/v1/docs/reference.js": (_OWN / "reference.js", "text/javascript", "The reference page's start-up script"),
    "/api/v1/docs/reference.css": (_OWN / "reference.css", "text/css", "The reference page's style sheet"),
    "/api/v1/docs/swagger-ui-bundle.js": (_swagger_ui_dist() / "swagger-ui-bundle.js", "text/javascript",
                                          "Swagger UI's script (from the swagger-ui-py package)"),
    "/api/v1/docs/swagger-ui.css": (_swagger_ui_dist() / "swagger-ui.css", "text/css", "Swagger UI's style sheet"),
    "/api/v1/docs/swagger-ui-LICENSE": (_swagger_ui_dist() / "LICENSE", "text/plain", "Swagger UI's licence (Apache-2.0)"),
}


def _serve(source: Any, media_type: str) -> Handler:
    # Read once, at start: Swagger UI's script is 1.5 MB, and a missing file fails the start.
    body = source.read_bytes()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=media_type, charset="utf-8", headers=_HEADERS)
    return handler


for _path, (_source, _media, _summary) in _FILES.items():
    routes.get(_path)(documented(Operation(summary=_summary, tag="reference", media_type=_media,
                                           responses={200: (None, "The file.")}))(_serve(_source, _media)))
