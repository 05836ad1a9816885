"""`/api/v1/openapi.json` (the contract, generated from the app),
`/api/v1/asyncapi.json` (the AMQP contract) and
`/api/v1/docs` (the same contract as a page a person can read; self-contained,
no scripts from elsewhere)."""

from __future__ import annotations

import html
import json
from typing import Any

from aiohttp import web

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


@routes.get("/api/v1/docs")
@documented(Operation(summary="This document as a page", tag="operations", media_type="text/html",
                      responses={200: (None, "HTML.")}))
async def docs_page(request: web.Request) -> web.Response:
    return web.Response(text=render(document(request.app)), content_type="text/html",
                        headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"})


def render(doc: dict[str, Any]) -> str:
    e = html.escape
    parts = [f"<h1>{e(doc['info']['title'])}</h1><p>{e(doc['info']['description'])}</p>",
             '<p>Machine-readable: <a href="/api/v1/openapi.json">openapi.json</a> (OpenAPI 3.1).</p>']
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            scope = op.get("x-required-scope")
            auth = f"API key with scope <code>{e(scope)}</code>" if scope else (
                "bearer token" if op.get("security") else "no authentication")
            parts.append(f'<section><h2><code>{e(method.upper())} {e(path)}</code></h2>'
                         f"<p><b>{e(op['summary'])}</b> &mdash; {auth}</p>")
            if op.get("description"):
                parts.append(f"<p>{e(op['description'])}</p>")
            for param in op.get("parameters", []):
                parts.append(f"<p>{e(param['in'])} parameter <code>{e(param['name'])}</code>"
                             f"{' (required)' if param.get('required') else ''}</p>")
            if "requestBody" in op:
                for media, content in op["requestBody"]["content"].items():
                    parts.append(f"<details><summary>Request body ({e(media)})</summary><pre>"
                                 f"{e(json.dumps(content['schema'], indent=2))}</pre></details>")
            rows = "".join(f"<tr><td>{e(code)}</td><td>{e(r['description'])}</td></tr>"
                           for code, r in op["responses"].items())
            parts.append(f"<table>{rows}</table></section>")
    parts.append("<h2>Schemas</h2>")
    for name, schema in doc["components"]["schemas"].items():
        parts.append(f"<details><summary><code>{e(name)}</code></summary><pre>"
                     f"{e(json.dumps(schema, indent=2))}</pre></details>")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}"
             "section{border-top:1px solid #ccc}td{padding:0 1em}pre{background:#f6f6f6;padding:.5em}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(doc['info']['title'])} API</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
