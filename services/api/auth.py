"""Authentication and authorisation as one middleware, driven by the
declarative table in `access_policy.py`.

`Authorization: Bearer <key>` is verified against the key store (SHA-256 of the
secret, constant-time compare), cached for API_KEY_CACHE_SECONDS. With
AUTH_REQUIRED off (development) a request without a key acts as `anonymous`
with every scope; a key that is sent is still verified, so scoping can be
tried locally. Error answers never echo the presented key.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import time
from collections import OrderedDict
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from loguru import logger

from services.api.access_policy import Open, decide
from services.api.rate_limit import RATE_LIMITS, TokenBuckets
from shared.errors import Forbidden, NotFound, RateLimited, Unauthorized
from shared.security.api_key_store import ApiKeyStore, KeyRecord
from shared.security.api_keys import Principal, Scope

PRINCIPAL = web.RequestKey("principal", Principal)
TOUCH_INTERVAL_SECONDS = 60.0
_CACHE_MAX = 10_000


class Authenticator:
    """Turns a request's bearer key into a Principal (or refuses it)."""

    def __init__(self, store: ApiKeyStore, *, required: bool, cache_seconds: float,
                 metrics_token: str | None, lookups: TokenBuckets | None = None) -> None:
        self.required = required
        self._store = store
        self._cache_seconds = cache_seconds
        self._metrics_token = metrics_token
        self._cache: OrderedDict[str, tuple[float, KeyRecord]] = OrderedDict()
        # Unknown keys: remembered as unknown for cache_seconds (a repeated bad key costs no
        # lookup), and a bucket per client address pays for each lookup that finds no key, so a
        # flood of random keys is answered 429 without loading the database.
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._lookups = lookups
        self._touched: dict[str, float] = {}
        self._background: set[asyncio.Task[None]] = set()

    async def principal(self, request: web.Request) -> Principal:
        token = _bearer(request)
        if token is None:
            if self.required:
                raise Unauthorized("an API key is required: send Authorization: Bearer <key>")
            return Principal.anonymous()
        record = await self._verify(token, request.remote or "unknown")
        if record is None:
            raise Unauthorized("the API key is not valid (unknown, revoked or expired)", presented=True)
        self._touch(record.key_id)
        return record.principal()

    def check_metrics_token(self, request: web.Request) -> None:
        if self._metrics_token is None:
            return
        token = _bearer(request)
        if token is None or not hmac.compare_digest(token.encode(), self._metrics_token.encode()):
            raise Unauthorized("/metrics needs Authorization: Bearer <METRICS_TOKEN>", presented=token is not None)

    async def _verify(self, token: str, address: str) -> KeyRecord | None:
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        if self._unknown.get(digest, 0.0) > now:
            return None
        if self._lookups is not None and (wait := self._lookups.take(address)):
            raise RateLimited(
                f"too many unknown API keys from this address: {self._lookups.rate:g} lookups/s with bursts "
                f"of {self._lookups.burst} (AUTH_FAILURE_RATE_PER_SECOND); retry later", max(1, math.ceil(wait)))
        record = await self._store.verify(token)
        if record is None:
            self._remember_unknown(digest, now)
        elif self._lookups is not None:
            self._lookups.refund(address)  # only lookups that find nothing are paid for
        if record is not None and self._cache_seconds > 0:
            self._cache[digest] = (now + self._cache_seconds, record)
            self._cache.move_to_end(digest)
            while len(self._cache) > _CACHE_MAX:
                self._cache.popitem(last=False)
        else:
            self._cache.pop(digest, None)
        return record

    def _remember_unknown(self, digest: str, now: float) -> None:
        if self._cache_seconds <= 0:
            return
        self._unknown[digest] = now + self._cache_seconds
        self._unknown.move_to_end(digest)
        while len(self._unknown) > _CACHE_MAX:
            self._unknown.popitem(last=False)

    def _touch(self, key_id: str) -> None:
        """Record `last_used_at` about once a minute per key, off the request path."""
        now = time.monotonic()
        if now - self._touched.get(key_id, -TOUCH_INTERVAL_SECONDS) < TOUCH_INTERVAL_SECONDS:
            return
        self._touched[key_id] = now

        async def touch() -> None:
            try:
                await self._store.touch(key_id)
            except Exception as exc:  # noqa: BLE001 - bookkeeping only
                logger.debug("could not record use of key {}: {}", key_id, type(exc).__name__)

        task = asyncio.create_task(touch())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("use Authorization: Bearer <key>", presented=True)
    return value.strip()


AUTHENTICATOR = web.AppKey("authenticator", Authenticator)


def auth_middleware() -> Any:
    """Reads the authenticator and buckets from the app (they are built at start-up)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        authenticator, limits = request.app[AUTHENTICATOR], request.app[RATE_LIMITS]
        decision = decide(request.method, request.path)
        access = decision.rule.access if decision.rule else None
        if access is Open.PUBLIC:
            return await handler(request)
        if access is Open.METRICS:
            authenticator.check_metrics_token(request)
            return await handler(request)
        if not request.path.startswith("/api/"):
            return await handler(request)  # no such route: the 404 says so

        principal = await authenticator.principal(request)
        request[PRINCIPAL] = principal
        if request.match_info.http_exception is not None:
            return await handler(request)  # authenticated, but no such route or method: 404/405
        if decision.rule is None:
            raise Forbidden(f"{request.method} {request.path} has no access rule; refused by default")
        assert isinstance(access, Scope)
        if not principal.has(access):
            raise Forbidden(f"this API key lacks the {access.value!r} scope needed here")
        if decision.tenant_kb is not None and not principal.may_use_kb(decision.tenant_kb):
            raise NotFound(f"knowledge base {decision.tenant_kb!r} not found")
        if not principal.is_anonymous:
            # Per key. Without auth (development, loopback only) there is no caller
            # to limit; the per-kb bucket still bounds task submissions.
            limits.charge_caller(principal.owner)
        return await handler(request)

    return middleware


def principal_of(request: web.Request) -> Principal:
    """The caller the middleware authenticated; a KeyError (500) if a route was
    reached without it, never a silent anonymous."""
    return request[PRINCIPAL]
