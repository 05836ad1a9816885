"""task dependencies and workflows: status `waiting`, edges, waiting messages, the release outbox, workflows

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_STATUSES = "('waiting', 'queued', 'processing', 'completed', 'failed', 'cancelled')"
_WORKFLOW_STATUSES = "('running', 'completed', 'failed', 'cancelled')"
_OLD_STATUSES = "('queued', 'processing', 'completed', 'failed', 'cancelled')"


def upgrade() -> None:
    op.drop_constraint("ck_tasks_status", "tasks", type_="check")
    op.create_check_constraint("ck_tasks_status", "tasks", f"status IN {_STATUSES}")

    # One row per dependency; `settled` flips once, when the parent's terminal
    # state commits: the flip is what counts, so no parent is counted twice.
    op.create_table(
        "task_edges",
        sa.Column("parent_id", postgresql.UUID(as_uuid=False), primary_key=True),
        sa.Column("child_id", postgresql.UUID(as_uuid=False), primary_key=True),
        sa.Column("settled", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_task_edges_child", "task_edges", ["child_id"])

    # What a waiting task publishes when released (its first-stage message) and
    # how many parents are still unsettled. Deleted at release or cancel.
    op.create_table(
        "waiting_tasks",
        sa.Column("task_id", postgresql.UUID(as_uuid=False), primary_key=True),
        sa.Column("message", postgresql.JSONB, nullable=False),
        sa.Column("remaining", sa.Integer, nullable=False),
        sa.Column("on_parent_failure", sa.Text, nullable=False, server_default="cancel"),
        sa.CheckConstraint("on_parent_failure IN ('cancel', 'run')", name="ck_waiting_on_parent_failure"),
    )

    # The release outbox: written in the transaction that made the task runnable.
    op.create_table(
        "task_releases",
        sa.Column("task_id", postgresql.UUID(as_uuid=False), primary_key=True),
        sa.Column("message", postgresql.JSONB, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
    )

    # Workflows (docs/decisions/0101): their tasks are ordinary tasks, named by ref.
    op.create_table(
        "workflows",
        sa.Column("id", postgresql.UUID(as_uuid=False), primary_key=True),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("callback_url", sa.Text),
        sa.Column("status", sa.Text, nullable=False, server_default="running"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        # Idempotency-Key (REST) or message_id (tm.submit), per owner as for tasks.
        sa.Column("idempotency_key", sa.Text),
        sa.CheckConstraint(f"status IN {_WORKFLOW_STATUSES}", name="ck_workflows_status"),
    )
    op.create_index("ux_workflows_owner_idempotency_key", "workflows", ["created_by", "idempotency_key"],
                    unique=True, postgresql_where=sa.text("idempotency_key IS NOT NULL"))
    op.create_table(
        "workflow_tasks",
        sa.Column("workflow_id", postgresql.UUID(as_uuid=False), primary_key=True),
        sa.Column("ref", sa.Text, primary_key=True),
        sa.Column("task_id", postgresql.UUID(as_uuid=False), nullable=False, unique=True),
    )


def downgrade() -> None:
    op.drop_table("workflow_tasks")
    op.drop_table("workflows")
    op.drop_table("task_releases")
    op.drop_table("waiting_tasks")
    op.drop_index("ix_task_edges_child", table_name="task_edges")
    op.drop_table("task_edges")
    op.execute("UPDATE tasks SET status = 'cancelled' WHERE status = 'waiting'")
    op.drop_constraint("ck_tasks_status", "tasks", type_="check")
    op.create_check_constraint("ck_tasks_status", "tasks", f"status IN {_OLD_STATUSES}")
