"""Our own message headers. Attempts are counted here, not in `x-death`
(newer RabbitMQ stops counting republished x-death entries)."""

ATTEMPT = "x-tm-attempt"  # 1 for the first attempt of the current stage
REDELIVERIES = "x-tm-redeliveries"  # times a worker died holding this message
# Not "x-...": a headers exchange ignores x- headers when matching, so a binding on
# one would match every message and a retry would wait in every tier at once.
RETRY_TIER = "tm-retry-tier"  # picks the tm.retry.<tier> delay queue
FIRST_FAILURE_AT = "x-tm-first-failure-at"
LAST_FAILURE_AT = "x-tm-last-failure-at"
LAST_ERROR = "x-tm-last-error"

# Dead-letter headers, for operators and `taskmgr dlq`.
DEAD_REASON = "x-tm-dead-reason"
DEAD_STAGE = "x-tm-dead-stage"
DEAD_SOURCE_QUEUE = "x-tm-dead-source-queue"
DEAD_AT = "x-tm-dead-at"
