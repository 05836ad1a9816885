"""tasks and the callback outbox

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tasks",
        sa.Column("id", postgresql.UUID(as_uuid=False), primary_key=True),
        sa.Column("run", sa.Integer, nullable=False, server_default="1"),
        sa.Column("task_type", sa.Text, nullable=False),
        sa.Column("kb_id", sa.Text),
        sa.Column("payload", postgresql.JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("priority", sa.Text, nullable=False, server_default="normal"),
        sa.Column("retry_limit", sa.Integer, nullable=False),
        sa.Column("timeout_seconds", sa.Float),
        sa.Column("callback_url", sa.Text),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("progress", sa.SmallInteger, nullable=False, server_default="0"),
        sa.Column("stage", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error", postgresql.JSONB),
        sa.Column("result", postgresql.JSONB),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("estimated_completion", sa.DateTime(timezone=True)),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("idempotency_key", sa.Text),
        sa.Column("request_hash", sa.Text),
        sa.CheckConstraint(
            "status IN ('queued', 'processing', 'completed', 'failed', 'cancelled')", name="ck_tasks_status"
        ),
        sa.CheckConstraint("progress BETWEEN 0 AND 100", name="ck_tasks_progress"),
        postgresql_with={"fillfactor": 80},
    )
    op.create_index(
        "ux_tasks_idempotency_key", "tasks", ["idempotency_key"], unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_index("ix_tasks_kb_id", "tasks", ["kb_id", sa.text("id DESC")])
    op.create_index("ix_tasks_status", "tasks", ["status", sa.text("id DESC")])

    op.create_table(
        "callbacks",
        sa.Column("task_id", postgresql.UUID(as_uuid=False), primary_key=True),
        sa.Column("run", sa.Integer, primary_key=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("last_status_code", sa.Integer),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("state IN ('pending', 'delivered', 'failed')", name="ck_callbacks_state"),
    )
    op.create_index(
        "ix_callbacks_due", "callbacks", ["next_attempt_at"], postgresql_where=sa.text("state = 'pending'")
    )


def downgrade() -> None:
    op.drop_table("callbacks")
    op.drop_table("tasks")
