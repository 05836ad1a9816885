"""The worker's plans, without a broker: what a finished attempt publishes
(services/worker/outcome_plan.py) and what a redelivered or poison delivery
does (services/worker/broken_deliveries.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.worker.broken_deliveries import finished_copy_steps, poison_steps, redelivery_steps
from services.worker.outcome_plan import (
    Cancelled,
    DeadLetter,
    Failed,
    ForwardTask,
    PublishEvent,
    Republish,
    ScheduleRetry,
    Succeeded,
    steps_for,
)
from services.worker.retry_policy import RetryPolicy
from services.worker.stages.base import StageOutput
from shared.amqp import headers as h
from shared.finished_tasks import REFUSAL
from shared.messages import (
    ErrorInfo,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskMessage,
    TaskRetrying,
    TaskStageCompleted,
)
from shared.topology import RetryTier

pytestmark = pytest.mark.fast

NOW = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
STARTED = NOW - timedelta(seconds=3)
# No jitter: the 1s base lands on the 1s tier for the first failure.
TASK_ID = "0b8f7c2e-5d1a-4f6b-9c3e-2a1d4e5f6a7b"
POLICY = RetryPolicy(base_seconds=1, factor=5, jitter=0)


class Attempt:
    started_at = STARTED

    def overall_progress(self, stage_percent: float | None = None) -> int:
        return 50

    def estimated_completion(self, *, stage_done: bool = False) -> datetime | None:
        return NOW + timedelta(seconds=7)


def task(*, stages: tuple[str, ...] = ("default",), retry_limit: int = 2) -> TaskMessage:
    return TaskMessage(task_id="t1", task_type="echo", kb_id="kb", retry_limit=retry_limit,
                       created_at=NOW, stages=stages, stage=stages[0])


def plan(outcome: Succeeded | Failed | Cancelled, message: TaskMessage, attempt: int = 1,
         headers: dict[str, object] | None = None) -> list[object]:
    return list(steps_for(outcome, message, attempt, headers or {}, ctx=Attempt(), retry_policy=POLICY, now=NOW))


def failure(retryable: bool) -> Failed:
    return Failed(ErrorInfo(type="boom", message="it broke", retryable=retryable, stage="default"))


def test_last_stage_success_completes_the_task() -> None:
    [step] = plan(Succeeded(StageOutput(result={"ok": 1})), task())
    assert isinstance(step, PublishEvent) and isinstance(step.event, TaskCompleted)
    assert step.event.result == {"ok": 1}
    assert (step.event.started_at, step.event.finished_at, step.event.attempt) == (STARTED, NOW, 1)


def test_middle_stage_success_reports_then_forwards_with_the_context() -> None:
    first, second = plan(Succeeded(StageOutput(context={"ref": "x"})), task(stages=("a", "b")))
    assert isinstance(first, PublishEvent) and isinstance(first.event, TaskStageCompleted)
    assert (first.event.next_stage, first.event.progress) == ("b", 50)
    assert first.event.estimated_completion == NOW + timedelta(seconds=7)
    assert isinstance(second, ForwardTask)
    assert (second.task.stage, second.task.context) == ("b", {"ref": "x"})


def test_a_stage_fanning_out_publishes_one_message_per_shard_in_the_same_stage_and_nothing_else() -> None:
    shards = ({"shard": {"index": 0, "count": 2}}, {"shard": {"index": 1, "count": 2}})
    steps = plan(Succeeded(StageOutput(fan_out=shards)), task(stages=("a", "b")))
    assert [(s.task.stage, s.task.context) for s in steps if isinstance(s, ForwardTask)] == [
        ("a", shards[0]), ("a", shards[1])]
    assert len(steps) == 2


def test_a_shard_that_is_not_the_last_publishes_nothing_and_the_last_forwards_without_its_range() -> None:
    shard = task(stages=("a", "b")).model_copy(update={"context": {"ref": "x", "shard": {"index": 0},
                                                                    "stage_started": 1.5}})
    assert plan(Succeeded(StageOutput(hold=True)), shard) == []
    _, forward = plan(Succeeded(StageOutput(context={"more": 1})), shard)
    assert isinstance(forward, ForwardTask) and forward.task.context == {"ref": "x", "more": 1}


def test_shard_page_ranges_cover_every_page_once() -> None:
    from services.worker.pipeline.shards import chunk_pages, page_ranges, shard_contexts

    assert page_ranges(50, 50) == [] and page_ranges(None, 50) == [] and page_ranges(500, 0) == []
    assert page_ranges(120, 50) == [(1, 50), (51, 100), (101, 120)]
    first, middle, last = (c["shard"] for c in shard_contexts(page_ranges(120, 50)))
    assert chunk_pages(first) == (-1, 50) and chunk_pages(middle) == (51, 100) and chunk_pages(last)[0] == 101
    assert chunk_pages(last)[1] >= 2**31 - 1


def test_cancelled_attempt_publishes_only_the_cancellation() -> None:
    [step] = plan(Cancelled(), task(), attempt=2)
    assert isinstance(step, PublishEvent) and isinstance(step.event, TaskCancelled)
    assert (step.event.attempt, step.event.finished_at) == (2, NOW)


def test_retryable_failure_within_the_limit_is_retried_before_it_is_announced() -> None:
    retry, event = plan(failure(True), task(retry_limit=2), attempt=1)
    assert isinstance(retry, ScheduleRetry)
    assert retry.tier == RetryTier("1s", 1)
    assert retry.headers == {h.ATTEMPT: 2, h.FIRST_FAILURE_AT: NOW.isoformat(),
                             h.LAST_FAILURE_AT: NOW.isoformat(), h.LAST_ERROR: "it broke"}
    assert isinstance(event, PublishEvent) and isinstance(event.event, TaskRetrying)
    assert event.event.next_attempt_at == NOW + timedelta(seconds=1)


def test_a_retry_keeps_the_first_failure_time() -> None:
    first = "2026-11-29T08:00:00+00:00"
    retry, _ = plan(failure(True), task(retry_limit=2), attempt=2, headers={h.FIRST_FAILURE_AT: first})
    assert isinstance(retry, ScheduleRetry)
    assert retry.headers[h.FIRST_FAILURE_AT] == first and retry.headers[h.ATTEMPT] == 3


def test_retries_exhausted_dead_letters_then_fails_the_task() -> None:
    dead, event = plan(failure(True), task(retry_limit=1), attempt=2,
                       headers={h.FIRST_FAILURE_AT: "earlier", "x-tm-custom": "kept", "other": "dropped"})
    assert isinstance(dead, DeadLetter)
    assert (dead.reason, dead.stage) == ("retries_exhausted", "default")
    assert TaskMessage.parse(dead.body) == task(retry_limit=1)
    assert dead.headers[h.DEAD_REASON] == "retries exhausted after 2 attempt(s)"
    assert dead.headers[h.DEAD_SOURCE_QUEUE] == "tm.stage.default"
    assert (dead.headers[h.ATTEMPT], dead.headers[h.FIRST_FAILURE_AT]) == (2, "earlier")
    assert dead.headers["x-tm-custom"] == "kept" and "other" not in dead.headers
    assert isinstance(event, PublishEvent) and isinstance(event.event, TaskFailed)
    assert event.event.dead_lettered is True
    assert event.event.error.message == "it broke (retries exhausted after 2 attempt(s))"


def test_permanent_failure_fails_the_task_without_a_dead_letter() -> None:
    [event] = plan(failure(False), task(retry_limit=5), attempt=1)
    assert isinstance(event, PublishEvent) and isinstance(event.event, TaskFailed)
    assert event.event.dead_lettered is False and event.event.error.message == "it broke"


def test_a_redelivery_under_the_limit_is_republished_with_its_count() -> None:
    body = task().model_dump_json().encode()
    [step] = redelivery_steps(body, {h.REDELIVERIES: "1", "k": "v"}, stage="default", max_redeliveries=3,
                              priority=5, message_id="m1", now=NOW)
    assert step == Republish("default", body, {h.REDELIVERIES: 2, "k": "v"}, 5, "m1")


def test_a_redelivery_past_the_limit_is_dead_lettered_and_fails_its_task() -> None:
    body = task().model_dump_json().encode()
    dead, event = redelivery_steps(body, {h.REDELIVERIES: 3, h.ATTEMPT: 2}, stage="default",
                                   max_redeliveries=3, priority=None, message_id=None, now=NOW)
    assert isinstance(dead, DeadLetter) and dead.reason == "redelivery_limit" and dead.body == body
    assert dead.headers[h.DEAD_REASON].startswith("redelivered 4 times")
    assert isinstance(event, PublishEvent) and isinstance(event.event, TaskFailed)
    assert (event.event.attempt, event.event.error.type, event.event.dead_lettered) == (2, "redelivery_limit", True)


def test_a_mangled_redelivery_count_counts_as_none() -> None:
    [step] = redelivery_steps(b"{}", {h.REDELIVERIES: "many"}, stage="default", max_redeliveries=1,
                              priority=None, message_id=None, now=NOW)
    assert isinstance(step, Republish) and step.headers[h.REDELIVERIES] == 1


def test_an_unparseable_redelivery_past_the_limit_is_only_dead_lettered() -> None:
    [dead] = redelivery_steps(b"not json", {h.REDELIVERIES: 9}, stage="default", max_redeliveries=3,
                              priority=None, message_id=None, now=NOW)
    assert isinstance(dead, DeadLetter) and dead.body == b"not json"


def test_poison_with_an_identity_fails_its_task() -> None:
    body = b'{"task_id": "%s", "task_type": "echo", "kb_id": "kb", "retry_limit": "lots"}' % TASK_ID.encode()
    dead, event = poison_steps(body, {h.ATTEMPT: 3}, "bad retry_limit", stage="default", now=NOW)
    assert isinstance(dead, DeadLetter) and (dead.reason, dead.body) == ("poison", body)
    assert dead.headers[h.DEAD_REASON] == "bad retry_limit"
    assert isinstance(event, PublishEvent) and isinstance(event.event, TaskFailed)
    assert (event.event.task_id, event.event.attempt, event.event.error.type) == (TASK_ID, 3, "poison_message")


def test_poison_without_an_identity_is_only_dead_lettered() -> None:
    [dead] = poison_steps(b"\xff\xfe", {}, "not JSON", stage="default", now=NOW)
    assert isinstance(dead, DeadLetter) and dead.reason == "poison"


def test_a_copy_of_a_finished_run_is_refused_to_the_dead_letters() -> None:
    body = task().model_dump_json().encode()
    [dead] = finished_copy_steps(body, {h.ATTEMPT: 1}, stage="default")
    assert isinstance(dead, DeadLetter) and (dead.reason, dead.body, dead.stage) == ("already_finished", body, "default")
    assert dead.headers[h.DEAD_REASON] == REFUSAL


def test_a_shards_error_names_its_pages() -> None:
    from services.worker.attempt_runner import _error

    shard = task().model_copy(update={"context": {"shard": {"index": 1, "count": 3, "first_page": 51,
                                                             "last_page": 100}}})
    assert _error("embedding_failed", "the endpoint said no", False, shard).message == (
        "pages 51-100 (shard 2 of 3): the endpoint said no")
    assert _error("embedding_failed", "the endpoint said no", False, task()).message == "the endpoint said no"


async def test_a_cancel_stops_every_shard_of_the_task_running_in_the_worker() -> None:
    import asyncio

    from services.worker.cancellation import CancellationRegistry, CancelledByRequest

    registry = CancellationRegistry()
    started = asyncio.Event()

    async def shard() -> None:
        started.set()
        await asyncio.sleep(60)

    runs = [asyncio.create_task(registry.run("t1", shard())) for _ in range(2)]
    other = asyncio.create_task(registry.run("t2", shard()))
    await started.wait()
    await asyncio.sleep(0)
    assert registry.cancel("t1")
    for run in runs:
        with pytest.raises(CancelledByRequest):
            await run
    assert not other.done()
    other.cancel()
    with pytest.raises(asyncio.CancelledError):
        await other
    assert not registry.cancel("t1")  # nothing of t1 runs any more
