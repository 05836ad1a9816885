"""How long one attempt of a task may run, derived from RabbitMQ's consumer_timeout.

A worker holds a task's delivery unacked for the whole attempt and then for up
to OUTCOME_PUBLISH_MAX_SECONDS while it retries publishing the outcome (a
broker refusing publishes). RabbitMQ closes a channel holding a delivery past
`consumer_timeout` and redelivers the task while it still runs, so:

    largest timeout_seconds = consumer_timeout - OUTCOME_PUBLISH_MAX_SECONDS - MARGIN_SECONDS,
                              at most TIMEOUT_SECONDS_CEILING (the request schema's bound)

docs/task-length-limits.md tabulates it per broker; a test checks that table,
the deploy files, README and .env.example against these functions.
"""

from __future__ import annotations

# The request schema's bound on timeout_seconds, whatever the broker allows.
TIMEOUT_SECONDS_CEILING = 86_400
# How long a worker keeps retrying the publishes of an outcome while still holding the delivery.
OUTCOME_PUBLISH_MAX_SECONDS = 300
# Slack for the time between a delivery arriving and the attempt's clock starting.
MARGIN_SECONDS = 60
# RabbitMQ 3.10's default consumer_timeout (30 min), in its unit (ms).
STOCK_CONSUMER_TIMEOUT_MS = 1_800_000


def largest_task_timeout(consumer_timeout_ms: int) -> int:
    """The largest timeout_seconds (MAX_TASK_TIMEOUT) safe under `consumer_timeout_ms`."""
    seconds = consumer_timeout_ms // 1000 - OUTCOME_PUBLISH_MAX_SECONDS - MARGIN_SECONDS
    if seconds <= 0:
        raise ValueError(f"consumer_timeout {consumer_timeout_ms} ms leaves no time for an attempt")
    return min(TIMEOUT_SECONDS_CEILING, seconds)


def smallest_consumer_timeout_ms(max_task_timeout: float) -> int:
    """The consumer_timeout (ms) a broker needs for attempts of up to `max_task_timeout` seconds."""
    return int((max_task_timeout + OUTCOME_PUBLISH_MAX_SECONDS + MARGIN_SECONDS) * 1000)


# What MAX_TASK_TIMEOUT defaults to: a broker with no consumer_timeout configured.
STOCK_MAX_TASK_TIMEOUT = largest_task_timeout(STOCK_CONSUMER_TIMEOUT_MS)
