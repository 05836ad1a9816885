"""Table definitions (SQLAlchemy Core). Alembic migrations create them; no
`create_all` at start-up."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

metadata = MetaData()

TASK_STATUSES = ("waiting", "scheduled", "queued", "processing", "completed", "failed", "cancelled")
CALLBACK_STATES = ("pending", "delivered", "failed")

tasks = Table(
    "tasks",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),
    # A DLQ replay starts a new run; events of older runs are ignored.
    Column("run", Integer, nullable=False, server_default="1"),
    Column("task_type", Text, nullable=False),
    Column("kb_id", Text),
    Column("payload", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("priority", Text, nullable=False, server_default="normal"),
    Column("retry_limit", Integer, nullable=False),
    Column("timeout_seconds", Float),
    Column("callback_url", Text),
    Column("status", Text, nullable=False),
    Column("progress", SmallInteger, nullable=False, server_default="0"),
    Column("stage", Text),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("error", JSONB),
    Column("result", JSONB),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("estimated_completion", DateTime(timezone=True)),
    Column("next_attempt_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("idempotency_key", Text),
    Column("request_hash", Text),
    # "key:<id>", "anonymous" (auth off) or "amqp" (tm.submit); idempotency keys are per owner.
    Column("created_by", Text, nullable=False, server_default="anonymous"),
    Column("run_at", DateTime(timezone=True)),  # a delayed task's due time (status 'scheduled' until then)
    Column("unique_key", Text),
    # The scoped key whose slots this task takes, and its limit (decision 0160).
    Column("concurrency_key", Text),
    Column("max_concurrency", Integer),
    CheckConstraint(f"status IN {TASK_STATUSES}", name="ck_tasks_status"),
    CheckConstraint("progress BETWEEN 0 AND 100", name="ck_tasks_progress"),
    Index("ux_tasks_owner_idempotency_key", "created_by", "idempotency_key", unique=True,
          postgresql_where=text("idempotency_key IS NOT NULL")),
    Index("ix_tasks_file_ref", text("(payload->>'file_ref')"), postgresql_where=text("payload ? 'file_ref'")),
    Index("ix_tasks_kb_id", "kb_id", text("id DESC")),
    Index("ix_tasks_status", "status", text("id DESC")),
    postgresql_with={"fillfactor": 80},
)

# The callback outbox: written in the same transaction as the terminal state,
# so a callback is never lost and never sent for a state that did not commit.
callbacks = Table(
    "callbacks",
    metadata,
    Column("task_id", UUID(as_uuid=False), primary_key=True),
    Column("run", Integer, primary_key=True),
    Column("url", Text, nullable=False),
    Column("state", Text, nullable=False, server_default="pending"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("last_error", Text),
    Column("last_status_code", Integer),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("delivered_at", DateTime(timezone=True)),
    CheckConstraint(f"state IN {CALLBACK_STATES}", name="ck_callbacks_state"),
    Index("ix_callbacks_due", "next_attempt_at", postgresql_where=text("state = 'pending'")),
)

# API keys: only a hash of the secret is stored; the key itself is shown once.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("secret_sha256", Text, nullable=False),
    Column("scopes", ARRAY(Text), nullable=False),
    Column("kb_ids", ARRAY(Text)),  # NULL: every knowledge base
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
    Column("last_used_at", DateTime(timezone=True)),
)

# Files posted to /api/v1/uploads (content under the upload store); owned by a kb.
uploads = Table(
    "uploads",
    metadata,
    Column("file_ref", Text, primary_key=True),
    Column("kb_id", Text, nullable=False),
    Column("created_by", Text, nullable=False),
    Column("filename", Text),
    Column("size_bytes", BigInteger, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("content_type", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Index("ix_uploads_created_at", "created_at"),
)

# Task dependencies (docs/decisions/0100): edges settle once; a waiting task's
# first-stage message waits in `waiting_tasks`; released ones pass through the
# `task_releases` outbox.
task_edges = Table(
    "task_edges",
    metadata,
    Column("parent_id", UUID(as_uuid=False), primary_key=True),
    Column("child_id", UUID(as_uuid=False), primary_key=True),
    Column("settled", Boolean, nullable=False, server_default=text("false")),
    Index("ix_task_edges_child", "child_id"),
)

waiting_tasks = Table(
    "waiting_tasks",
    metadata,
    Column("task_id", UUID(as_uuid=False), primary_key=True),
    Column("message", JSONB, nullable=False),
    Column("remaining", Integer, nullable=False),
    Column("on_parent_failure", Text, nullable=False, server_default="cancel"),
    CheckConstraint("on_parent_failure IN ('cancel', 'run')", name="ck_waiting_on_parent_failure"),
)

task_releases = Table(
    "task_releases",
    metadata,
    Column("task_id", UUID(as_uuid=False), primary_key=True),
    Column("message", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
)

# Workflows (docs/decisions/0101): a set of tasks named by local refs.
WORKFLOW_STATUSES = ("running", "completed", "failed", "cancelled")

workflows = Table(
    "workflows",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),
    Column("created_by", Text, nullable=False),
    Column("callback_url", Text),
    Column("status", Text, nullable=False, server_default="running"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("idempotency_key", Text),
    CheckConstraint(f"status IN {WORKFLOW_STATUSES}", name="ck_workflows_status"),
    Index("ux_workflows_owner_idempotency_key", "created_by", "idempotency_key", unique=True,
          postgresql_where=text("idempotency_key IS NOT NULL")),
)

workflow_tasks = Table(
    "workflow_tasks",
    metadata,
    Column("workflow_id", UUID(as_uuid=False), primary_key=True),
    Column("ref", Text, primary_key=True),
    Column("task_id", UUID(as_uuid=False), nullable=False, unique=True),
)

# A delayed task's message, published by the dispatcher's release loop when due (decision 0090).
delayed_tasks = Table(
    "delayed_tasks",
    metadata,
    Column("task_id", UUID(as_uuid=False), primary_key=True),
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("message", JSONB, nullable=False),
    Index("ix_delayed_tasks_due_at", "due_at"),
)

# Who holds a unique key (per owner); reclaimable once its task ended and its window passed.
unique_keys = Table(
    "unique_keys",
    metadata,
    Column("owner", Text, primary_key=True),
    Column("unique_key", Text, primary_key=True),
    Column("task_id", UUID(as_uuid=False), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

# Concurrency keys (decision 0160): a task run holding one of its key's slots, from its
# release until its terminal state commits ...
concurrency_slots = Table(
    "concurrency_slots",
    metadata,
    Column("task_id", UUID(as_uuid=False), ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True),
    Column("run", Integer, nullable=False),
    Column("key", Text, nullable=False),
    Column("acquired_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Index("ix_concurrency_slots_key", "key"),
)

# ... and the tasks over their key's limit (status `queued`), with the message to publish.
concurrency_waiting = Table(
    "concurrency_waiting",
    metadata,
    Column("task_id", UUID(as_uuid=False), ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True),
    Column("seq", BigInteger, Identity(always=True), nullable=False),
    Column("run", Integer, nullable=False),
    Column("key", Text, nullable=False),
    Column("max_concurrency", Integer, nullable=False),
    Column("priority", SmallInteger, nullable=False),
    Column("message", JSONB, nullable=False),
    # The fair window's round-robin (decision 0161): a task's kb and its round; 0 for other keys.
    Column("kb_id", Text),
    Column("fair_rank", BigInteger, nullable=False, server_default=text("0")),
    Index("ix_concurrency_waiting_order", "key", text("priority DESC"), "fair_rank", "seq"),
    Index("ix_concurrency_waiting_kb", "key", "kb_id", "fair_rank"),
)

# Periodic schedules (docs/scheduler.md); `next_fire_at` is the first firing not yet made.
schedules = Table(
    "schedules",
    metadata,
    Column("id", UUID(as_uuid=False), primary_key=True),
    Column("name", Text),
    Column("cron", Text, nullable=False),
    Column("timezone", Text, nullable=False),
    Column("catch_up", Text, nullable=False),
    Column("task", JSONB, nullable=False),  # the validated task request each firing submits
    Column("kb_id", Text),
    Column("created_by", Text, nullable=False),
    Column("paused", Boolean, nullable=False, server_default=text("false")),
    Column("next_fire_at", DateTime(timezone=True), nullable=False),
    Column("last_fire_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("catch_up IN ('none', 'latest', 'all')", name="ck_schedules_catch_up"),
    Index("ix_schedules_due", "next_fire_at", postgresql_where=text("NOT paused")),
)

# One row per firing: the primary key (schedule, fire time) makes each firing one task.
schedule_firings = Table(
    "schedule_firings",
    metadata,
    Column("schedule_id", UUID(as_uuid=False), ForeignKey("schedules.id", ondelete="CASCADE"), primary_key=True),
    Column("fire_time", DateTime(timezone=True), primary_key=True),
    Column("fired_at", DateTime(timezone=True), nullable=False),
    Column("idempotency_key", Text, nullable=False),
)
