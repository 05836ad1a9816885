"""Which deliveries count as dead letters brought back, and which runs a worker
knows to be finished (the decisions of 0070 and 0071, without a fleet)."""

from __future__ import annotations

from services.worker.finished_tasks import FinishedRuns
from shared.finished_tasks import FinishedRuns as FinishedBroadcast
from shared.finished_tasks import is_finished_broadcast
from shared.hand_replay import dead_mark
from shared.messages import CancelTask


def test_our_dead_letter_headers_mark_a_message() -> None:
    assert dead_mark({"x-tm-dead-reason": "retries exhausted"}) == "x-tm-dead-reason=retries exhausted"
    assert dead_mark({"x-tm-dead-at": "2026-11-29T08:00:00"}) is not None


def test_a_broker_dead_letter_is_marked_but_an_expired_retry_is_not() -> None:
    retry = {"queue": "tm.retry.5s", "exchange": "tm.retry", "reason": "expired", "count": 1}
    rejected = {"queue": "tm.stage.default", "exchange": "tm.tasks", "reason": "rejected", "count": 1}
    via_dlx = {"queue": b"tm.retry.1s", "exchange": b"tm.dlx", "reason": b"expired"}
    assert dead_mark({"x-death": [retry], "x-tm-attempt": 2}) is None
    assert "tm.stage.default" in (dead_mark({"x-death": [retry, rejected]}) or "")
    assert "tm.dlx" in (dead_mark({"x-death": [via_dlx]}) or "")
    assert dead_mark({}) is None and dead_mark({"x-death": ["junk"]}) is None


def test_a_finished_run_is_refused_but_a_newer_run_is_not() -> None:
    finished = FinishedRuns()
    finished.remember("t1", 2)
    assert finished.is_finished("t1", 1) and finished.is_finished("t1", 2)
    assert not finished.is_finished("t1", 3), "a replay carries a newer run"
    assert not finished.is_finished("t2", 1)
    finished.remember("t1", 1)
    assert finished.is_finished("t1", 2), "runs only grow"


def test_finished_runs_are_forgotten_oldest_first_past_the_cap() -> None:
    finished = FinishedRuns(max_remembered=2)
    for task_id in ("a", "b", "c"):
        finished.remember(task_id, 1)
    assert not finished.is_finished("a", 1) and finished.is_finished("c", 1)


def test_the_broadcast_is_told_apart_from_a_cancel() -> None:
    assert is_finished_broadcast(FinishedBroadcast(runs={"t": 1}).model_dump_json().encode())
    assert not is_finished_broadcast(CancelTask(task_id="t").model_dump_json().encode())
