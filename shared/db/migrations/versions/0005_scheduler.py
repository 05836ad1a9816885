"""scheduler: delayed tasks (status 'scheduled', run_at, delayed_tasks), unique keys, periodic schedules

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_OLD_STATUSES = "('waiting', 'queued', 'processing', 'completed', 'failed', 'cancelled')"
_NEW_STATUSES = "('waiting', 'scheduled', 'queued', 'processing', 'completed', 'failed', 'cancelled')"


def upgrade() -> None:
    op.add_column("tasks", sa.Column("run_at", sa.DateTime(timezone=True)))
    op.add_column("tasks", sa.Column("unique_key", sa.Text))
    op.drop_constraint("ck_tasks_status", "tasks", type_="check")
    op.create_check_constraint("ck_tasks_status", "tasks", f"status IN {_NEW_STATUSES}")
    # The message a delayed task publishes when it is due; the dispatcher deletes the row on release.
    op.create_table(
        "delayed_tasks",
        sa.Column("task_id", postgresql.UUID(as_uuid=False), primary_key=True),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("message", postgresql.JSONB, nullable=False),
    )
    op.create_index("ix_delayed_tasks_due_at", "delayed_tasks", ["due_at"])
    # Who holds a unique key: one row per (owner, key); reclaimable once the
    # task finished and its window passed.
    op.create_table(
        "unique_keys",
        sa.Column("owner", sa.Text, primary_key=True),
        sa.Column("unique_key", sa.Text, primary_key=True),
        sa.Column("task_id", postgresql.UUID(as_uuid=False), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "schedules",
        sa.Column("id", postgresql.UUID(as_uuid=False), primary_key=True),
        sa.Column("name", sa.Text),
        sa.Column("cron", sa.Text, nullable=False),
        sa.Column("timezone", sa.Text, nullable=False),
        sa.Column("catch_up", sa.Text, nullable=False),
        sa.Column("task", postgresql.JSONB, nullable=False),
        sa.Column("kb_id", sa.Text),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("paused", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("next_fire_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_fire_at", sa.DateTime(timezone=True)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("catch_up IN ('none', 'latest', 'all')", name="ck_schedules_catch_up"),
    )
    op.create_index("ix_schedules_due", "schedules", ["next_fire_at"], postgresql_where=sa.text("NOT paused"))
    # One row per firing: the primary key is what makes a firing produce exactly one task.
    op.create_table(
        "schedule_firings",
        sa.Column("schedule_id", postgresql.UUID(as_uuid=False),
                  sa.ForeignKey("schedules.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("fire_time", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("fired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("idempotency_key", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("schedule_firings")
    op.drop_table("schedules")
    op.drop_table("unique_keys")
    op.drop_table("delayed_tasks")
    op.execute("DELETE FROM tasks WHERE status = 'scheduled'")
    op.drop_constraint("ck_tasks_status", "tasks", type_="check")
    op.create_check_constraint("ck_tasks_status", "tasks", f"status IN {_OLD_STATUSES}")
    op.drop_column("tasks", "unique_key")
    op.drop_column("tasks", "run_at")
