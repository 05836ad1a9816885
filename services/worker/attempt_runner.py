"""Running one attempt of a stage: under the task's time limit, stoppable by a
cancel request, announced as started once it ran a moment; whatever the
handler does ends as an `Outcome` (errors never escape), then observed."""

from __future__ import annotations

import asyncio

from loguru import logger

from services.worker.attempt import AttemptContext
from services.worker.cancellation import CancellationRegistry, CancelledByRequest
from services.worker.estimates import DurationEstimator
from services.worker.outcome_plan import Cancelled, Failed, Outcome, Succeeded
from services.worker.stages.base import StageHandler
from shared import metrics
from shared.errors import TaskError
from shared.messages import ErrorInfo, TaskMessage


async def run_attempt(
    handler: StageHandler,
    task: TaskMessage,
    ctx: AttemptContext,
    *,
    cancellations: CancellationRegistry,
    timeout: float,
    announce_after: float,
) -> Outcome:
    loop = asyncio.get_running_loop()
    announce = loop.call_later(announce_after, lambda: asyncio.ensure_future(ctx.announce_started()))
    try:
        async with asyncio.timeout(timeout):
            output = await cancellations.run(task.task_id, handler(task, ctx))
        return Succeeded(output)
    except CancelledByRequest:
        return Cancelled()
    except TimeoutError:
        return Failed(_error("timeout", f"the attempt exceeded its {timeout:g}s time limit", True, task))
    except TaskError as exc:
        return Failed(_error(exc.code, exc.message, exc.retryable, task))
    except Exception as exc:  # noqa: BLE001 - an unexpected error is retried like a transient one
        logger.opt(exception=exc).warning("stage raised an unexpected error")
        return Failed(_error(type(exc).__name__, str(exc) or repr(exc), True, task))
    finally:
        announce.cancel()


def _error(kind: str, message: str, retryable: bool, task: TaskMessage) -> ErrorInfo:
    shard = task.context.get("shard")
    if isinstance(shard, dict):  # the document's error says which part of it failed
        message = (f"pages {shard.get('first_page')}-{shard.get('last_page')} "
                   f"(shard {int(shard.get('index', 0)) + 1} of {shard.get('count')}): {message}")
    return ErrorInfo(type=kind, message=message[:4000], retryable=retryable, stage=task.stage)


def observe(outcome: Outcome, ctx: AttemptContext, estimator: DurationEstimator) -> None:
    """The attempt's metrics, duration estimate and log line."""
    task, elapsed = ctx.task, ctx.elapsed_seconds
    label = {Succeeded: "succeeded", Failed: "failed", Cancelled: "cancelled"}[type(outcome)]
    metrics.task_attempts_total.labels(task.task_type, task.stage, label).inc()
    metrics.task_processing_duration_seconds.labels(task.task_type, task.stage).observe(elapsed)
    if isinstance(outcome, Succeeded):
        estimator.observe(task.task_type, task.stage, elapsed)
        # Debug: at INFO a task's success is the dispatcher's one "completed" line
        # (a line per attempt cost ~20% of a no-op task's CPU across the fleet).
        logger.debug("attempt succeeded in {:.3f}s", elapsed)
    elif isinstance(outcome, Failed):
        logger.info("attempt failed after {:.3f}s: {}", elapsed, outcome.error.message)
    else:
        logger.info("attempt cancelled after {:.3f}s", elapsed)
