"""The dispatcher's state rules, against the real database: idempotent,
monotonic, first terminal state wins, batch == one by one."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest_asyncio
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.dispatcher.state_fold import fold
from services.dispatcher.state_writer import TaskStateWriter
from shared.db.engine import create_engine
from shared.db.models import callbacks, tasks
from shared.ids import new_task_id
from shared.messages import (
    ErrorInfo,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskProgress,
    TaskQueued,
    TaskRetrying,
    TaskStarted,
    utcnow,
)
from tests.support.environment import TestEnvironment

T0 = utcnow()


@pytest_asyncio.fixture(loop_scope="session")
async def engine(environment: TestEnvironment) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(environment.postgres)
    yield engine
    await engine.dispose()


async def _new_task(engine: AsyncEngine, *, callback_url: str | None = None) -> str:
    task_id = new_task_id()
    async with engine.begin() as conn:
        await conn.execute(tasks.insert().values(
            id=task_id, task_type="echo", retry_limit=3, status="queued", created_at=T0, updated_at=T0,
            callback_url=callback_url, stage="default",
        ))
    return task_id


async def _row(engine: AsyncEngine, task_id: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (await conn.execute(select(tasks).where(tasks.c.id == task_id))).one()
    return dict(row._mapping)


def _at(seconds: float):  # type: ignore[no-untyped-def]
    return T0 + timedelta(seconds=seconds)


def _base(task_id: str, at: float, **kw: Any) -> dict[str, Any]:
    return {"task_id": task_id, "task_type": "echo", "at": _at(at), **kw}


def started(task_id: str, at: float, attempt: int = 1) -> TaskStarted:
    return TaskStarted(**_base(task_id, at), attempt=attempt, started_at=_at(at))


def progress(task_id: str, at: float, pct: int) -> TaskProgress:
    return TaskProgress(**_base(task_id, at), progress=pct)


def completed(task_id: str, at: float, result: Any = "done") -> TaskCompleted:
    return TaskCompleted(**_base(task_id, at), result=result, started_at=_at(0), finished_at=_at(at))


def cancelled(task_id: str, at: float) -> TaskCancelled:
    return TaskCancelled(**_base(task_id, at), finished_at=_at(at))


def failed(task_id: str, at: float) -> TaskFailed:
    return TaskFailed(**_base(task_id, at), error=ErrorInfo(type="x", message="boom"), finished_at=_at(at))


def retrying(task_id: str, at: float, attempt: int) -> TaskRetrying:
    return TaskRetrying(**_base(task_id, at), attempt=attempt, error=ErrorInfo(type="x", message=f"try {attempt}"),
                        next_attempt_at=_at(at + 5))


async def test_a_late_started_after_completed_changes_nothing(engine: AsyncEngine) -> None:
    writer = TaskStateWriter(engine, default_callback_url=None)
    task_id = await _new_task(engine)
    await writer.apply(fold([completed(task_id, 2)]))
    ended, _ = await writer.apply(fold([started(task_id, 1), progress(task_id, 1.5, 40)]))
    row = await _row(engine, task_id)
    assert ended == []
    assert row["status"] == "completed" and row["progress"] == 100 and row["result"] == "done"


async def test_applying_the_same_events_twice_is_a_no_op(engine: AsyncEngine) -> None:
    writer = TaskStateWriter(engine, default_callback_url="http://127.0.0.1:9/hook")
    task_id = await _new_task(engine)
    events = [started(task_id, 1), progress(task_id, 2, 50), completed(task_id, 3)]
    first, _ = await writer.apply(fold(events))
    row = await _row(engine, task_id)
    second, _ = await writer.apply(fold(events))
    assert [e.task_id for e in first] == [task_id] and second == []
    assert await _row(engine, task_id) == row
    async with engine.connect() as conn:
        outbox = (await conn.execute(select(callbacks).where(callbacks.c.task_id == task_id))).all()
    assert len(outbox) == 1 and outbox[0].url == "http://127.0.0.1:9/hook"


async def test_the_first_terminal_state_wins_within_and_across_batches(engine: AsyncEngine) -> None:
    writer = TaskStateWriter(engine, default_callback_url=None)
    a, b = await _new_task(engine), await _new_task(engine)
    await writer.apply(fold([started(a, 1), cancelled(a, 2), completed(a, 3)]))
    await writer.apply(fold([completed(b, 3)]))
    await writer.apply(fold([cancelled(b, 2)]))
    assert (await _row(engine, a))["status"] == "cancelled"
    assert (await _row(engine, a))["result"] is None
    assert (await _row(engine, b))["status"] == "completed"


async def test_an_event_for_an_unknown_task_creates_its_row(engine: AsyncEngine) -> None:
    writer = TaskStateWriter(engine, default_callback_url=None)
    task_id = new_task_id()
    ended, _ = await writer.apply(fold([completed(task_id, 1, result={"ok": True})]))
    assert [e.task_id for e in ended] == [task_id]
    assert (await _row(engine, task_id))["result"] == {"ok": True}


async def test_only_terminal_tasks_with_a_url_get_a_callback(engine: AsyncEngine) -> None:
    writer = TaskStateWriter(engine, default_callback_url=None)
    with_url = await _new_task(engine, callback_url="http://127.0.0.1:9/a")
    without = await _new_task(engine)
    running = await _new_task(engine, callback_url="http://127.0.0.1:9/b")
    ended, _ = await writer.apply(fold([failed(with_url, 1), failed(without, 1), started(running, 1)]))
    assert {e.task_id: e.callback_queued for e in ended} == {with_url: True, without: False}


async def test_a_requeue_with_a_new_run_resets_the_task(engine: AsyncEngine) -> None:
    writer = TaskStateWriter(engine, default_callback_url=None)
    task_id = await _new_task(engine)
    await writer.apply(fold([failed(task_id, 1)]))
    await writer.apply(fold([TaskQueued(**_base(task_id, 2), run=2, attempt=1)]))
    row = await _row(engine, task_id)
    assert (row["status"], row["run"], row["error"], row["finished_at"]) == ("queued", 2, None, None)
    await writer.apply(fold([TaskCompleted(**_base(task_id, 3), run=2, finished_at=_at(3), result=1),
                             TaskStarted(**_base(task_id, 4), run=1, started_at=_at(4))]))
    row = await _row(engine, task_id)
    assert (row["status"], row["run"], row["result"]) == ("completed", 2, 1)


async def test_a_batch_gives_the_same_row_as_its_events_one_by_one(engine: AsyncEngine) -> None:
    writer = TaskStateWriter(engine, default_callback_url=None)
    rng = random.Random(7)
    fields = ("status", "progress", "stage", "attempts", "error", "result", "started_at", "finished_at",
              "estimated_completion", "next_attempt_at")
    for _ in range(40):
        batch_id, single_id = await _new_task(engine), await _new_task(engine)
        template = _random_history(rng)
        for task_id, one_by_one in ((batch_id, False), (single_id, True)):
            events = [make(task_id) for make in template]
            if one_by_one:
                for event in events:
                    await writer.apply(fold([event]))
            else:
                await writer.apply(fold(events))
        batch_row, single_row = await _row(engine, batch_id), await _row(engine, single_id)
        assert {f: batch_row[f] for f in fields} == {f: single_row[f] for f in fields}


def _random_history(rng: random.Random) -> list:  # type: ignore[type-arg]
    """A plausible event history, shuffled a little (events can arrive out of order)."""
    history = [lambda t: started(t, 1)]
    at = 1.0
    for attempt in range(1, rng.randint(1, 3)):
        at += 1
        history.append(lambda t, a=at, n=attempt: retrying(t, a, n))
        at += 1
        history.append(lambda t, a=at, n=attempt + 1: started(t, a, n))
    for pct in sorted(rng.sample(range(1, 99), rng.randint(0, 3))):
        at += 0.5
        history.append(lambda t, a=at, p=pct: progress(t, a, p))
    at += 1
    history.append(rng.choice([lambda t: completed(t, at), lambda t: failed(t, at), lambda t: cancelled(t, at)]))
    if rng.random() < 0.5:
        history.append(rng.choice([lambda t: cancelled(t, at + 1), lambda t: progress(t, at + 1, 99)]))
    if rng.random() < 0.5:
        i = rng.randrange(len(history) - 1)
        history[i], history[i + 1] = history[i + 1], history[i]
    if rng.random() < 0.3:
        history.append(rng.choice(history))  # a duplicate delivery
    return history


def test_fold_keeps_arrival_order_for_terminal_ties() -> None:
    task_id = new_task_id()
    [delta] = fold([cancelled(task_id, 5), completed(task_id, 1)])
    assert delta.status.value == "cancelled"
