"""scheduler: delayed tasks (status 'scheduled', run_at, delayed_tasks) and unique keys

Revision ID: 0005
Revises: 0003
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0003"
branch_labels = None
depends_on = None

_OLD_STATUSES = "('queued', 'processing', 'completed', 'failed', 'cancelled')"
_NEW_STATUSES = "('scheduled', 'queued', 'processing', 'completed', 'failed', 'cancelled')"


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


def downgrade() -> None:
    op.drop_table("unique_keys")
    op.drop_table("delayed_tasks")
    op.execute("DELETE FROM tasks WHERE status = 'scheduled'")
    op.drop_constraint("ck_tasks_status", "tasks", type_="check")
    op.create_check_constraint("ck_tasks_status", "tasks", f"status IN {_OLD_STATUSES}")
    op.drop_column("tasks", "unique_key")
    op.drop_column("tasks", "run_at")
