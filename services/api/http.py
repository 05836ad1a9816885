"""HTTP plumbing for the api: JSON bodies in and out, and one error middleware
that turns the project's errors into clear JSON answers."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from loguru import logger
from pydantic import BaseModel

from shared.db.errors import database_unavailable
from shared.errors import (
    Conflict,
    FieldError,
    Forbidden,
    InsufficientStorage,
    InternalError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    TaskManagerError,
    Unauthorized,
    Unavailable,
)
from shared.json_limits import DEFAULT_LIMITS, loads_checked

JSON_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """`body` is JSON-ready data or a response model (`schemas.py`; unset optional fields left out)."""
    if isinstance(body, BaseModel):
        body = body.model_dump(exclude_unset=True)
    return web.Response(
        body=orjson.dumps(body, option=JSON_OPTIONS), status=status, headers=headers, content_type="application/json"
    )


def error_body(code: str, message: str, details: list[FieldError] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return {"error": error}


async def read_json(request: web.Request) -> Any:
    """The decoded body; 400 when it is not JSON, 422 past a JSON shape limit (413 comes
    from aiohttp's size cap). A batch holds its items two levels down, hence the envelope."""
    from services.api.resources import SETTINGS  # imported here, as in error_middleware

    seconds = request.app[SETTINGS].api.body_timeout_seconds
    try:
        async with asyncio.timeout(seconds):
            raw = await request.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout(text=f"the body did not arrive within {seconds:g}s (API_BODY_TIMEOUT)") from None
    if not raw:
        raise InvalidRequest("the body is empty; send a JSON object", [FieldError("body", "is required")])
    try:
        return loads_checked(raw, DEFAULT_LIMITS.envelope(2))
    except orjson.JSONDecodeError as exc:
        raise MalformedJson(f"the body is not valid JSON: {exc}") from None


class MalformedJson(TaskManagerError):
    code = "malformed_json"


_STATUS = {
    InvalidRequest: 422, NotFound: 404, Conflict: 409, Unavailable: 503, MalformedJson: 400,
    Unauthorized: 401, Forbidden: 403, RateLimited: 429, PayloadTooLarge: 413,
    InsufficientStorage: 507, InternalError: 500,
}


def _headers(exc: TaskManagerError) -> dict[str, str] | None:
    if isinstance(exc, Unavailable | RateLimited):
        return {"Retry-After": str(exc.retry_after_seconds)}
    if isinstance(exc, Unauthorized):  # RFC 6750
        return {"WWW-Authenticate": 'Bearer realm="taskmgr"' + (', error="invalid_token"' if exc.presented else "")}
    return None


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except TaskManagerError as exc:
        status = next((s for cls, s in _STATUS.items() if isinstance(exc, cls)), 400)
        if isinstance(exc, Unavailable):
            logger.warning("503 on {} {}: {}", request.method, request.path, exc.message)
        elif isinstance(exc, Unauthorized | Forbidden):
            logger.info("{} on {} {} from {}: {}", status, request.method, request.path, request.remote, exc.message)
        details = exc.errors if isinstance(exc, InvalidRequest | Forbidden) else None
        return json_response(error_body(exc.code, exc.message, details), status, _headers(exc))
    except web.HTTPRequestEntityTooLarge:
        from services.api.resources import SETTINGS

        limit = request.app[SETTINGS].api.max_body_bytes
        return json_response(error_body("payload_too_large", f"the body exceeds the limit of {limit} bytes"), 413)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        message = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
        headers = {}
        if "Allow" in exc.headers:
            # HEAD is implied by GET (RFC 9110); the contract lists the methods it documents.
            headers["Allow"] = ",".join(m for m in exc.headers["Allow"].split(",") if m.strip() != "HEAD")
        return json_response(error_body(code, message), exc.status, headers)
    except Exception as exc:  # noqa: BLE001 - the last resort: any other error is a logged 500, never a trace
        if database_unavailable(exc):
            # A read met a lost connection or no primary (a failover under way): retry, not a bug.
            logger.warning("503 on {} {}: database unavailable ({})", request.method, request.path,
                           type(exc).__name__)
            return json_response(error_body("unavailable", "the database is unavailable; retry shortly"), 503,
                                 {"Retry-After": "1"})
        logger.exception("unhandled error on {} {}", request.method, request.path)
        return json_response(error_body("internal_error", "an internal error occurred"), 500)
