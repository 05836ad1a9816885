"""Prometheus metrics, named as in the seed design. Each process exposes the
ones it moves (the api on /metrics, workers and the dispatcher on METRICS_PORT).

Counters of task outcomes live in the dispatcher, which sees each terminal
transition exactly once, so a redelivered message never counts twice.
Labels are bounded: task types, stages, queues, outcomes; never task ids.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

# --- the seed's names -----------------------------------------------------------------
task_queue_size = Gauge("task_queue_size", "Messages ready in a queue (sampled by the api)", ["queue"])
task_processing_duration_seconds = Histogram(
    "task_processing_duration_seconds",
    "Time a worker spent on one attempt of one stage",
    ["task_type", "stage"],
    buckets=DURATION_BUCKETS,
)
task_success_total = Counter("task_success_total", "Tasks that reached completed", ["task_type"])
task_failure_total = Counter("task_failure_total", "Tasks that reached failed", ["task_type"])
worker_pool_active_count = Gauge("worker_pool_active_count", "Task slots busy in this worker", ["stage"])
worker_pool_idle_count = Gauge("worker_pool_idle_count", "Task slots free in this worker", ["stage"])

# --- what operators expect besides -------------------------------------------------------
tasks_submitted_total = Counter("tasks_submitted_total", "Tasks accepted by the api", ["task_type", "via"])
tasks_rejected_total = Counter("tasks_rejected_total", "Submissions refused", ["reason", "via"])
tasks_retried_total = Counter("tasks_retried_total", "Attempts sent back for a retry", ["task_type", "stage"])
tasks_dead_lettered_total = Counter("tasks_dead_lettered_total", "Messages sent to tm.dead", ["reason"])
tasks_released_total = Counter(
    "tasks_released_total",
    "Held-back tasks published to their first stage: `delay` when due (scheduled), `dependencies` "
    "when their parents completed (waiting)", ["reason"])
tasks_cancelled_total = Counter("tasks_cancelled_total", "Tasks that reached cancelled", ["task_type"])
tasks_waiting_count = Gauge("tasks_waiting_count", "Tasks waiting for their parents (as of the last release poll)")
task_attempts_total = Counter(
    "task_attempts_total", "Attempts finished by workers, by outcome", ["task_type", "stage", "outcome"]
)
callback_attempts_total = Counter("callback_attempts_total", "Callback deliveries tried", ["outcome"])
callback_failures_total = Counter("callback_failures_total", "Callbacks given up after the retry budget")
callback_refused_total = Counter("callback_refused_total", "Callbacks refused by the SSRF policy (never sent)")
dispatcher_event_lag_seconds = Histogram(
    "dispatcher_event_lag_seconds",
    "From an event's creation to its state being committed",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
dispatcher_batch_size = Histogram(
    "dispatcher_batch_size", "Events written per database transaction", buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000)
)
http_request_duration_seconds = Histogram(
    "http_request_duration_seconds",
    "API request latency",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
task_queue_consumers = Gauge("task_queue_consumers", "Consumers attached to a queue (sampled by the api)", ["queue"])
worker_processes_live = Gauge(
    "worker_processes_live", "Worker processes heard from within a few heartbeat intervals (seen by the api)", ["stage"]
)
embedding_batch_duration_seconds = Histogram(
    "embedding_batch_duration_seconds",
    "Time to embed one batch of chunks",
    ["backend", "model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
tasks_replayed_total = Counter("tasks_replayed_total", "Dead-lettered tasks replayed by operators")
embedding_model_loads_total = Counter(
    "embedding_model_loads_total", "Embedding models loaded by this process (one per embed worker)",
    ["backend", "model"],
)
embedding_texts_total = Counter(
    "embedding_texts_total", "Texts embedded, by where the vector came from", ["backend", "model", "source"]
)
search_requests_total = Counter("search_requests_total", "Knowledge-base searches by the mode that answered",
                                ["mode"])

# --- the event stream (GET /api/v1/events) ----------------------------------------------------
event_streams_open = Gauge("event_streams_open", "Server-sent event streams open on this api")
event_streams_closed_total = Counter("event_streams_closed_total", "Event streams ended, by why", ["reason"])
