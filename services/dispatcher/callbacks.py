"""Delivering callbacks from the outbox (`callbacks` table).

A row exists only once its terminal state committed. The sender claims due
rows (a lease, `FOR UPDATE SKIP LOCKED`, so several dispatchers share the
work), POSTs the signed body, and records every attempt. Failures wait with
exponential backoff and jitter; after `CALLBACK_MAX_ATTEMPTS` the callback is
marked `failed`, visible on the task and in `callback_failures_total`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import backoff
import orjson
from loguru import logger
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared import metrics
from shared.db.errors import DB_ERRORS
from shared.runtime import stop_task
from shared.security.callback_policy import (
    CallbackPolicy,
    CallbackRefused,
    redact_url,
    sanitised_excerpt,
)
from shared.settings import CallbackSettings
from shared.webhooks import sign

IDLE_POLL_SECONDS = 1.0

_CLAIM = text("""
UPDATE callbacks AS c SET next_attempt_at = now() + make_interval(secs => :lease)
FROM (
    SELECT task_id, run FROM callbacks
    -- run 0 is a workflow's callback (workflow_callbacks.py), not a task's.
    WHERE state = 'pending' AND next_attempt_at <= now() AND run > 0
    ORDER BY next_attempt_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
) AS due, tasks AS t
WHERE c.task_id = due.task_id AND c.run = due.run AND t.id = c.task_id
RETURNING CAST(c.task_id AS text) AS task_id, c.run, c.url, c.attempts,
          t.kb_id, t.task_type, t.status, t.result, t.error, t.finished_at,
          t.stage, t.attempts AS task_attempts
""")

_DELIVERED = text("""
UPDATE callbacks SET state = 'delivered', attempts = attempts + 1, delivered_at = now(),
       last_status_code = :status_code, last_error = NULL
WHERE task_id = CAST(:task_id AS uuid) AND run = :run
""")

_FAILED_ATTEMPT = text("""
UPDATE callbacks SET attempts = attempts + 1, last_status_code = :status_code, last_error = :error,
       state = CASE WHEN attempts + 1 >= :max_attempts THEN 'failed' ELSE 'pending' END,
       next_attempt_at = now() + make_interval(secs => :delay)
WHERE task_id = CAST(:task_id AS uuid) AND run = :run
RETURNING state
""")

_NEXT_DUE = text("SELECT min(next_attempt_at) FROM callbacks WHERE state = 'pending'")


@dataclass(frozen=True)
class DueCallback:
    task_id: str
    run: int
    url: str
    attempts: int
    body: bytes
    # What log lines about this callback carry (shared.logging.TASK_FIELDS).
    log_fields: Mapping[str, Any]


class CallbackSender:
    """`session` must connect through `guarded_connector(policy)`: the policy is
    checked on the URL here and on every resolved address in the connector."""

    def __init__(
        self, engine: AsyncEngine, settings: CallbackSettings, session: aiohttp.ClientSession, policy: CallbackPolicy
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._session = session
        self._policy = policy
        self._secrets = settings.secrets()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="callback-sender")

    async def stop(self, grace_seconds: float = 10.0) -> None:
        await stop_task(self._task, "the callback sender")
        if self._sending:
            await asyncio.wait(self._sending, timeout=grace_seconds)

    async def _run(self) -> None:
        while True:
            claimed = 0
            try:
                free = self._settings.concurrency - len(self._sending)
                if free > 0:
                    due = await self._claim(free)
                    claimed = len(due)
                    for callback in due:
                        task = asyncio.create_task(self._deliver(callback))
                        self._sending.add(task)
                        task.add_done_callback(self._sending.discard)
            except DB_ERRORS as exc:
                logger.warning("callback outbox unavailable ({}); retrying", type(exc).__name__)
            if claimed == 0:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), IDLE_POLL_SECONDS)
            elif len(self._sending) >= self._settings.concurrency:
                await asyncio.wait(set(self._sending), return_when=asyncio.FIRST_COMPLETED)

    async def _claim(self, limit: int) -> list[DueCallback]:
        lease = self._settings.timeout_seconds + 30
        async with self._engine.begin() as conn:
            rows = (await conn.execute(_CLAIM, {"limit": limit, "lease": lease})).all()
        return [
            DueCallback(r.task_id, r.run, r.url, r.attempts, _body(r._mapping), {
                "task_id": r.task_id, "kb_id": r.kb_id, "task_type": r.task_type, "stage": r.stage,
                "attempt": r.task_attempts,
            })
            for r in rows
        ]

    async def _deliver(self, callback: DueCallback) -> None:
        with logger.contextualize(**callback.log_fields):
            await self._deliver_once(callback)

    async def _deliver_once(self, callback: DueCallback) -> None:
        msg_id = f"msg_{callback.task_id.replace('-', '')}_{callback.run}"
        headers = {"Content-Type": "application/json", **sign(self._secrets, msg_id, callback.body)}
        status_code: int | None = None
        error: str | None = None
        try:
            self._policy.check_url(callback.url)
            async with self._session.post(
                callback.url,
                data=callback.body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self._settings.timeout_seconds),
            ) as response:
                status_code = response.status
                if 300 <= response.status < 400:
                    error = f"HTTP {response.status}: redirects are not followed"
                elif not 200 <= response.status < 300:
                    error = f"HTTP {response.status}"
        except CallbackRefused as exc:
            await self._refuse(callback, exc)
            return
        except aiohttp.ClientConnectorDNSError as exc:
            if isinstance(exc.os_error, CallbackRefused):
                await self._refuse(callback, exc.os_error)
                return
            error = f"cannot resolve the callback host ({type(exc.os_error).__name__})"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # What the client library says may quote the URL (a token in its query) or the target's raw bytes.
            error = sanitised_excerpt(f"{type(exc).__name__}: {exc}")
        await self._record(callback, status_code, error)

    async def _refuse(self, callback: DueCallback, exc: CallbackRefused) -> None:
        """The policy refused the URL: no retry can help (a DNS answer changed to a
        private address is exactly what must not be followed)."""
        logger.warning("callback for task {} to {} refused: {}", callback.task_id, redact_url(callback.url),
                       exc.message)
        metrics.callback_refused_total.inc()
        await self._record(callback, None, f"refused by the callback policy: {exc.message}", permanent=True)

    async def _record(
        self, callback: DueCallback, status_code: int | None, error: str | None, *, permanent: bool = False
    ) -> None:
        params: dict[str, Any] = {"task_id": callback.task_id, "run": callback.run, "status_code": status_code}
        try:
            async with self._engine.begin() as conn:
                if error is None:
                    await conn.execute(_DELIVERED, params)
                    metrics.callback_attempts_total.labels("delivered").inc()
                    logger.info("callback delivered to {} (HTTP {})", redact_url(callback.url), status_code)
                    return
                delay = self._delay_seconds(callback.attempts + 1)
                state = (await conn.execute(_FAILED_ATTEMPT, {
                    **params, "error": error, "delay": delay,
                    "max_attempts": 0 if permanent else self._settings.max_attempts,
                })).scalar_one()
        except DB_ERRORS as exc:
            # The lease expires and the callback is tried again: at-least-once.
            logger.warning("could not record a callback attempt for task {}: {}", callback.task_id, exc)
            return
        metrics.callback_attempts_total.labels("failed").inc()
        if state == "failed":
            metrics.callback_failures_total.inc()
            logger.error("callback for task {} to {} failed for good after {} attempts: {}",
                         callback.task_id, redact_url(callback.url), callback.attempts + 1, error)
        else:
            logger.warning("callback for task {} failed ({}); next try in {:.1f}s", callback.task_id, error, delay)

    def _delay_seconds(self, attempts: int) -> float:
        """The `attempts`-th value of backoff's exponential series, capped, with
        jitter in its upper half (never a near-zero wait after a failure)."""
        series = backoff.expo(factor=self._settings.backoff_base_seconds, max_value=self._settings.backoff_max_seconds)
        next(series)  # prime the generator
        ceiling = next(itertools.islice(series, attempts - 1, None))
        return ceiling / 2 + backoff.full_jitter(ceiling / 2)


def _body(row: Mapping[Any, Any]) -> bytes:
    body: dict[str, Any] = {
        "task_id": row["task_id"],
        "kb_id": row["kb_id"],
        "task_type": row["task_type"],
        "status": row["status"],
        "finished_at": row["finished_at"],
    }
    if row["status"] == "completed":
        body["result"] = row["result"]
    else:
        body["error"] = row["error"]
    return orjson.dumps(body, option=orjson.OPT_UTC_Z)

