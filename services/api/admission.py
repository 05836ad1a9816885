"""Admission: turning validated requests into recorded, routed tasks.

One path for REST, batch and `tm.submit`:

    BEGIN; INSERT rows; publish each to its first stage (confirms pipelined); COMMIT

The broker confirms before the row commits, so a client that gets `201` has a
task that is both recorded and queued. If a publish fails its row is deleted
before the commit and nothing is left half-created. (If the commit itself
fails after the broker confirmed, the task still runs and the dispatcher
creates its row from its events: at-least-once, never lost.)

Group commit: requests that arrive while transactions are open wait and share
the next one, so under load one INSERT, one COMMIT and a window of pipelined
confirms serve many requests; a lone request still goes at once. What happens
to each request is the same as if it had its own transaction.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson
from loguru import logger
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.api import dependencies, scheduling
from services.api import task_repository as repo
from services.api.fair_window import FairWindow
from services.api.task_repository import TaskRow
from shared import concurrency_keys, metrics
from shared.amqp.publisher import Publisher
from shared.concurrency_keys import Keyed, fair_window_key, priority_rank, visible_key
from shared.db.errors import DB_ERRORS
from shared.errors import Conflict, InternalError, TaskManagerError, Unavailable
from shared.ids import new_task_id
from shared.messages import TaskMessage, utcnow
from shared.status import TaskStatus
from shared.task_request import ValidTask

# Transactions open at once: two keep the database and the broker busy while the
# next batch gathers; more only split the same requests into smaller batches.
MAX_OPEN_TRANSACTIONS = 2
# Rows per transaction (a batch request larger than this still goes whole).
MAX_ROWS_PER_TRANSACTION = 500


class _Replays(Exception):
    pass


class _PublishedThenFailed(Exception):
    pass


def _plain(valid: ValidTask, row: dict[str, Any]) -> bool:
    """Published at once, nothing held back: no parents, no unique key, no delay, no concurrency key."""
    return (not valid.request.depends_on and valid.request.unique_key is None
            and row["status"] == TaskStatus.QUEUED.value and row["concurrency_key"] is None)


@dataclass(frozen=True)
class Admitted:
    task: TaskRow
    created: bool  # False when an idempotency key returned an existing task


AdmissionResult = Admitted | TaskManagerError
Item = tuple[ValidTask, str | None]  # a task and its idempotency key
_Owned = tuple[ValidTask, str | None, str]  # ... and who submitted it (the idempotency namespace)


@dataclass
class _Waiting:
    """One caller's items, waiting for a transaction to take them."""

    items: Sequence[Item]
    via: str
    owner: str
    done: asyncio.Future[list[AdmissionResult]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Admission:
    def __init__(
        self, engine: AsyncEngine, publisher: Publisher, *, max_in_flight: int, wait_seconds: float,
        pool: asyncpg.Pool | None = None, fair: FairWindow | None = None,
    ) -> None:
        self._engine = engine
        self._pool = pool  # plain tasks skip SQLAlchemy when given one
        self._fair = fair  # None: fairness between kbs is off (FAIR_SCHEDULING=false)
        self._publisher = publisher
        self._slots = asyncio.Semaphore(max_in_flight)
        self._wait_seconds = wait_seconds
        self._waiting: list[_Waiting] = []
        self._open: set[asyncio.Task[None]] = set()

    async def admit(self, items: Sequence[Item], *, via: str, owner: str) -> list[AdmissionResult]:
        """Admit `(task, idempotency_key)` pairs for `owner` (whose namespace the
        idempotency keys live in); one result per item, in order."""
        if self._slots.locked():  # the common case skips wait_for, which costs a task per call
            try:
                await asyncio.wait_for(self._slots.acquire(), self._wait_seconds)
            except TimeoutError:
                busy = Unavailable("too many tasks are being admitted right now; retry shortly")
                return [busy for _ in items]
        else:
            await self._slots.acquire()
        try:
            waiting = _Waiting(items, via, owner)
            self._waiting.append(waiting)
            self._start_transactions()
            # Shielded: a caller that goes away must not cancel the others' transaction.
            return await asyncio.shield(waiting.done)
        finally:
            self._slots.release()

    def _start_transactions(self) -> None:
        while self._waiting and len(self._open) < MAX_OPEN_TRANSACTIONS:
            batch: list[_Waiting] = []
            rows = 0
            while self._waiting and (not batch or rows + len(self._waiting[0].items) <= MAX_ROWS_PER_TRANSACTION):
                waiting = self._waiting.pop(0)
                batch.append(waiting)
                rows += len(waiting.items)
            task = asyncio.create_task(self._transaction(batch))
            self._open.add(task)
            task.add_done_callback(self._transaction_done)

    def _transaction_done(self, task: asyncio.Task[None]) -> None:
        self._open.discard(task)
        self._start_transactions()

    async def _transaction(self, batch: list[_Waiting]) -> None:
        items = [(valid, key, waiting.owner) for waiting in batch for valid, key in waiting.items]
        try:
            results = await self._admit(items)
        except BaseException as exc:  # every waiting caller must hear of it
            for waiting in batch:
                if not waiting.done.done():
                    waiting.done.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        start = 0
        for waiting in batch:
            mine = results[start : start + len(waiting.items)]
            start += len(waiting.items)
            _count(waiting, mine)
            if not waiting.done.done():
                waiting.done.set_result(mine)

    async def _admit(self, items: Sequence[_Owned]) -> list[AdmissionResult]:
        now = utcnow()
        rows = [task_row(valid, key, owner, now) for valid, key, owner in items]
        results: list[AdmissionResult | None] = [None] * len(items)
        published = False
        try:
            if (self._pool is not None and all(_plain(valid, row) for (valid, _, _), row in zip(items, rows, strict=True))
                    and (self._fair is None or not self._fair.engaged_for(row["stage"] for row in rows))):
                plain = await self._admit_plain(self._pool, items, rows)
                if plain is not None:
                    if self._fair is not None:
                        self._fair.published(row["stage"] for row in rows)
                    return plain
            async with self._engine.begin() as conn:
                plans = await _plan_dependants(conn, items, rows, results)
                candidates = [row for i, row in enumerate(rows) if results[i] is None]
                inserted = await repo.insert_tasks(conn, candidates)
                existing = await repo.tasks_by_idempotency_key(
                    conn, [(r["created_by"], r["idempotency_key"]) for r in candidates if r["id"] not in inserted]
                )
                new = [i for i, row in enumerate(rows) if results[i] is None and row["id"] in inserted]
                # Held back, not published now: a unique key's duplicate, a delayed task (decision 0090),
                # a task waiting for parents (decision 0100).
                await self._hold_back(conn, items, rows, inserted, results, now)
                waiting = [i for i in new if results[i] is None and rows[i]["status"] == TaskStatus.WAITING.value]
                await dependencies.record_waiting(conn, [
                    (str(rows[i]["id"]), items[i][0], plans[i],
                     first_stage_message(items[i][0], rows[i]).model_dump(mode="json"))
                    for i in waiting
                ])
                for i in waiting:
                    results[i] = Admitted(rows[i], created=True)
                to_publish = [i for i in new if results[i] is None]
                # Over its concurrency key's limit: waits, queued, for a slot (decision 0160).
                withdrawn = await _take_slots(conn, items, rows, to_publish, results, plans, self._fair)
                to_publish = [i for i in to_publish if results[i] is None]
                if self._fair is not None:
                    self._fair.published(rows[i]["stage"] for i in to_publish)
                published = bool(to_publish)
                outcomes = await asyncio.gather(
                    *(self._publisher.task(first_stage_message(items[i][0], rows[i], plans.get(i)))
                      for i in to_publish),
                    return_exceptions=True,
                )
                refused: set[str] = set()
                for i, outcome in zip(to_publish, outcomes, strict=True):
                    if isinstance(outcome, BaseException):
                        refused.add(str(rows[i]["id"]))
                        results[i] = _as_unavailable(outcome)
                    else:
                        results[i] = Admitted(rows[i], created=True)
                for i, row in enumerate(rows):
                    if results[i] is None:
                        results[i] = _replayed(row, existing.get((row["created_by"], row["idempotency_key"])), refused)
                # A refused publish gives its slot on (to a task of this batch that waits for it, say).
                await concurrency_keys.free(conn, sorted(refused))
                await repo.delete_tasks(conn, refused | withdrawn)
                await scheduling.release_unique_keys(conn, sorted(refused | withdrawn))
        except DB_ERRORS as exc:
            logger.warning("admission failed: database unavailable ({})", type(exc).__name__)
            return [Unavailable("the task database is unavailable; retry shortly") for _ in items]
        except Exception as exc:  # noqa: BLE001 - one bad row must not fail the requests it shares a batch with
            if published or isinstance(exc, _PublishedThenFailed) or len(items) == 1:
                # After a publish a retry could run a task twice; alone, the row is the culprit.
                logger.opt(exception=exc).error("admission: {} row(s) could not be stored", len(items))
                failed = InternalError(f"the task could not be stored ({type(exc).__name__}); it was not created")
                return [failed for _ in items]
            return await self._isolate(items)
        return [r for r in results if r is not None]

    async def _admit_plain(
        self, pool: asyncpg.Pool, items: Sequence[_Owned], rows: list[dict[str, Any]]
    ) -> list[AdmissionResult] | None:
        """The common case on asyncpg directly (decision 0181): BEGIN, one INSERT,
        the publishes, COMMIT. None, rolled back before any publish, when the
        general path must answer: an idempotency key that already exists (a
        replay), or a row the INSERT refused (the general path isolates it)."""
        publishing = False
        try:
            async with pool.acquire() as conn, conn.transaction():
                inserted = await conn.fetch(repo.INSERT_TASKS_ASYNCPG, orjson.dumps(rows).decode())
                if len(inserted) < len(rows):
                    raise _Replays
                publishing = True
                outcomes = await asyncio.gather(
                    *(self._publisher.task(first_stage_message(items[i][0], row)) for i, row in enumerate(rows)),
                    return_exceptions=True,
                )
                refused = [str(row["id"]) for row, outcome in zip(rows, outcomes, strict=True)
                           if isinstance(outcome, BaseException)]
                if refused:
                    await conn.execute(repo.DELETE_TASKS_ASYNCPG, refused)
        except _Replays:
            return None
        except DB_ERRORS:
            raise
        except Exception as exc:
            if publishing:
                raise _PublishedThenFailed from exc
            return None
        return [_as_unavailable(outcome) if isinstance(outcome, BaseException) else Admitted(row, created=True)
                for row, outcome in zip(rows, outcomes, strict=True)]

    async def _isolate(self, items: Sequence[_Owned]) -> list[AdmissionResult]:
        """Find the rows that broke a batch by halving it: each half is its own
        transaction, so the good rows commit and only a bad row's request fails."""
        mid = len(items) // 2
        return [*await self._admit(items[:mid]), *await self._admit(items[mid:])]


    @staticmethod
    async def _hold_back(conn: AsyncConnection, items: Sequence[_Owned], rows: list[dict[str, object]],
                         inserted: set[str], results: list[AdmissionResult | None], now: datetime) -> None:
        """Decide, for each inserted row, what is not published now (decision 0090): a
        duplicate of a unique key answers its holder (and is deleted), a delayed task waits."""
        duplicates, delayed = [], []
        await scheduling.lock_unique_keys(conn, [
            (str(row["created_by"]), items[i][0].request.unique_key)  # type: ignore[misc]
            for i, row in enumerate(rows) if row["id"] in inserted and items[i][0].request.unique_key is not None])
        for i, row in enumerate(rows):
            if row["id"] not in inserted:
                continue
            request = items[i][0].request
            if request.unique_key is not None:
                holder = await scheduling.claim_unique_key(conn, row, request.unique_for_seconds, now)
                if holder is not None:
                    duplicates.append(str(row["id"]))
                    results[i] = Admitted(holder, created=False)
                    continue
            if row["status"] == TaskStatus.SCHEDULED.value:
                delayed.append((str(row["id"]), row["run_at"], first_stage_message(items[i][0], row)))
                results[i] = Admitted(row, created=True)
        await repo.delete_tasks(conn, duplicates)
        await scheduling.insert_delayed(conn, delayed)  # type: ignore[arg-type]


def keyed(valid: ValidTask, row: dict[str, Any], plan: dependencies.Plan | None = None) -> Keyed | None:
    """What the concurrency gate needs of a task with a key; None without one."""
    if row.get("concurrency_key") is None:
        return None
    # A payload secret is never stored (decision 0090), so such a task cannot wait for a slot.
    no_secret = valid.stored_payload is None or valid.stored_payload == valid.payload
    return Keyed(str(row["id"]), 1, str(row["concurrency_key"]), int(row["max_concurrency"]),
                 priority_rank(str(row["priority"])), first_stage_message(valid, row, plan).model_dump(mode="json"),
                 can_wait=no_secret)


def busy_key(row: dict[str, Any]) -> Conflict:
    return Conflict(f"concurrency key {visible_key(row['concurrency_key'])!r} is at its limit and this task "
                    "cannot wait for it: its payload holds a secret, which is never stored; retry later")


def windowed(valid: ValidTask, row: dict[str, Any], window: int, plan: dependencies.Plan | None = None
             ) -> Keyed | None:
    """What the fair window's gate needs of a task without a key of its own (decision 0161);
    None for one that bypasses it (its payload holds a secret, which is never stored)."""
    if valid.stored_payload is not None and valid.stored_payload != valid.payload:
        return None
    return Keyed(str(row["id"]), 1, fair_window_key(str(row["stage"])), window,
                 priority_rank(str(row["priority"])), first_stage_message(valid, row, plan).model_dump(mode="json"),
                 fair_kb=str(row["kb_id"] or ""))


async def _take_slots(conn: AsyncConnection, items: Sequence[_Owned], rows: list[dict[str, Any]],
                      candidates: list[int], results: list[AdmissionResult | None],
                      plans: dict[int, dependencies.Plan], fair: FairWindow | None) -> set[str]:
    """Tasks over their key's limit, or behind their stage's fair window, get their answer
    now (queued, not published); answers the ids of those refused (their rows are deleted).
    A task with a key of its own does not take the window: one slot per task run (0160)."""
    entries = {i: k for i in candidates if (k := keyed(items[i][0], rows[i])) is not None}
    if fair is not None:
        unkeyed = [i for i in candidates if i not in entries]
        stages = Counter(str(rows[i]["stage"]) for i in unkeyed)
        entries |= {i: k for i in unkeyed if fair.engaged(str(rows[i]["stage"]), stages[str(rows[i]["stage"])])
                    and (k := windowed(items[i][0], rows[i], fair.window, plans.get(i))) is not None}
    if not entries:
        return set()  # the plain path: no query
    outcomes = await concurrency_keys.take(conn, list(entries.values()))
    withdrawn = set()
    for i, entry in entries.items():
        if outcomes[entry.task_id] == "waiting":
            results[i] = Admitted(rows[i], created=True)
            if fair is not None and entry.fair_kb is not None:
                fair.waiting(str(rows[i]["stage"]))
        elif outcomes[entry.task_id] == "refused":
            results[i] = busy_key(rows[i])
            withdrawn.add(entry.task_id)
    return withdrawn


def _count(waiting: _Waiting, results: Sequence[AdmissionResult]) -> None:
    for (valid, _), result in zip(waiting.items, results, strict=True):
        if isinstance(result, Admitted) and result.created:
            metrics.tasks_submitted_total.labels(valid.task_type.name, waiting.via).inc()
            row = result.task
            # Debug (bind costs nothing when filtered): at INFO the dispatcher logs each task once, when it ends.
            logger.bind(task_id=str(row["id"]), kb_id=row["kb_id"], task_type=row["task_type"],
                        stage=row["stage"], attempt=row["attempts"]).debug(
                "task accepted via {} (priority {})", waiting.via, row["priority"])
        elif isinstance(result, TaskManagerError):
            metrics.tasks_rejected_total.labels(result.code, waiting.via).inc()


def task_row(valid: ValidTask, idempotency_key: str | None, owner: str, now: datetime) -> dict[str, Any]:
    request = valid.request
    due_at = request.due_at(now)
    concurrency = valid.concurrency(owner)
    return {
        "id": new_task_id(),
        "run": 1,
        "task_type": valid.task_type.name,
        "kb_id": request.kb_id,
        # Secrets (a PDF password) travel only in the message, never in the row.
        "payload": valid.stored_payload if valid.stored_payload is not None else valid.payload,
        "priority": request.priority.value,
        "retry_limit": valid.retry_limit,
        "timeout_seconds": request.timeout_seconds,
        "callback_url": valid.callback_url,
        "status": (TaskStatus.QUEUED if due_at is None else TaskStatus.SCHEDULED).value,
        "progress": 0,
        "stage": valid.task_type.stages[0],
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
        "idempotency_key": idempotency_key,
        # Only an idempotent retry needs the fingerprint; hashing every request costs.
        "request_hash": valid.request_hash if idempotency_key is not None else None,
        "created_by": owner,
        "run_at": due_at,
        "unique_key": request.unique_key,
        "concurrency_key": concurrency[0] if concurrency else None,
        "max_concurrency": concurrency[1] if concurrency else None,
    }


async def _plan_dependants(
    conn: AsyncConnection, items: Sequence[_Owned], rows: list[dict[str, object]],
    results: list[AdmissionResult | None],
) -> dict[int, dependencies.Plan]:
    """Tasks with parents: refused ones get their result now, waiting ones their status."""
    if not any(valid.request.depends_on for valid, _, _ in items):
        return {}  # the plain path: no query
    plans: dict[int, dependencies.Plan] = {}
    for i, plan in (await dependencies.plan_dependants(conn, [valid for valid, _, _ in items])).items():
        if isinstance(plan, TaskManagerError):
            results[i] = plan
        else:
            plans[i] = plan
            if plan.waiting:
                rows[i]["status"] = TaskStatus.WAITING.value
    return plans


def first_stage_message(
    valid: ValidTask, row: dict[str, object], plan: dependencies.Plan | None = None
) -> TaskMessage:
    stages = valid.task_type.stages
    return TaskMessage(
        task_id=str(row["id"]),
        task_type=valid.task_type.name,
        kb_id=valid.request.kb_id,
        payload=valid.payload,
        priority=valid.request.priority,
        retry_limit=valid.retry_limit,
        timeout_seconds=valid.request.timeout_seconds,
        created_at=row["created_at"],
        stages=stages,
        stage=stages[0],
        # A child whose parents all ended before it was admitted runs now, reading their results.
        context={"parents": plan.parents} if plan is not None else {},
    )


def _replayed(row: dict[str, object], existing: TaskRow | None, refused: set[str]) -> AdmissionResult:
    if existing is None or str(existing["id"]) in refused:
        # The row that holds the key is being rolled back (here or in another transaction).
        return Unavailable("a request with this Idempotency-Key is in progress; retry shortly")
    if existing["request_hash"] != row["request_hash"]:
        return Conflict(
            "this Idempotency-Key was already used for a different request",
            task_id=str(existing["id"]),
        )
    return Admitted(existing, created=False)


def _as_unavailable(exc: BaseException) -> TaskManagerError:
    if isinstance(exc, TaskManagerError):
        return exc
    logger.opt(exception=exc).error("unexpected error while publishing a task")
    return Unavailable("the broker did not accept the task")
