"""Liveness and readiness. Liveness answers while the event loop runs;
readiness runs each dependency check with a short timeout."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

Check = Callable[[], Awaitable[None]]  # raises when the dependency is not usable


async def run_checks(checks: Mapping[str, Check], timeout: float = 2.0) -> tuple[bool, dict[str, Any]]:
    async def one(check: Check) -> dict[str, Any]:
        try:
            await asyncio.wait_for(check(), timeout)
            return {"ok": True}
        except Exception as exc:  # noqa: BLE001 - a failing check is reported, not raised
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}

    results = dict(zip(checks, await asyncio.gather(*(one(c) for c in checks.values())), strict=True))
    return all(r["ok"] for r in results.values()), results


def health_routes(checks: Mapping[str, Check], *, process: str) -> list[web.RouteDef]:
    async def live(_: web.Request) -> web.Response:
        return _json({"status": "ok", "process": process})

    async def ready(_: web.Request) -> web.Response:
        ok, details = await run_checks(checks)
        return _json({"status": "ready" if ok else "unready", "checks": details}, 200 if ok else 503)

    async def summary(_: web.Request) -> web.Response:
        ok, details = await run_checks(checks)
        body = {"status": "ok" if ok else "degraded", "live": True, "ready": ok, "process": process, "checks": details}
        return _json(body, 200 if ok else 503)

    return [
        web.get("/health", summary),
        web.get("/health/live", live),
        web.get("/health/ready", ready),
    ]


async def metrics_handler(_: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def metrics_token_middleware(token: str | None) -> Any:
    """With METRICS_TOKEN set, /metrics answers only `Authorization: Bearer <token>`."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        if token is not None and request.path == "/metrics":
            sent = request.headers.get("Authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
                return _json({"error": {"code": "unauthorized", "message": "/metrics needs the METRICS_TOKEN"}},
                             401, {"WWW-Authenticate": 'Bearer realm="taskmgr"'})
        response: web.StreamResponse = await handler(request)
        return response

    return middleware


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


async def start_ops_server(
    host: str, port: int, checks: Mapping[str, Check], *, process: str, metrics_token: str | None = None
) -> web.AppRunner | None:
    """/metrics and /health/* for processes without their own HTTP API (workers, dispatcher)."""
    if port == 0:
        return None
    app = web.Application(middlewares=[metrics_token_middleware(metrics_token)])
    app.add_routes([*health_routes(checks, process=process), web.get("/metrics", metrics_handler)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        # Work matters more than its metrics: keep running, say so loudly.
        from loguru import logger

        logger.error("cannot serve /metrics and /health on {}:{} ({}); running without them", host, port, exc)
        await runner.cleanup()
        return None
    return runner
