"""concurrency keys: tasks.concurrency_key/max_concurrency, concurrency_slots, concurrency_waiting

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("concurrency_key", sa.Text))
    op.add_column("tasks", sa.Column("max_concurrency", sa.Integer))
    # One row per task run holding one of its key's slots (decision 0160).
    op.create_table(
        "concurrency_slots",
        sa.Column("task_id", postgresql.UUID(as_uuid=False), sa.ForeignKey("tasks.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("run", sa.Integer, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ix_concurrency_slots_key", "concurrency_slots", ["key"])
    # Tasks over their key's limit, with the message to publish when a slot frees.
    op.create_table(
        "concurrency_waiting",
        sa.Column("task_id", postgresql.UUID(as_uuid=False), sa.ForeignKey("tasks.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("seq", sa.BigInteger, sa.Identity(always=True), nullable=False),
        sa.Column("run", sa.Integer, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("max_concurrency", sa.Integer, nullable=False),
        sa.Column("priority", sa.SmallInteger, nullable=False),
        sa.Column("message", postgresql.JSONB, nullable=False),
    )
    op.create_index("ix_concurrency_waiting_order", "concurrency_waiting",
                    ["key", sa.text("priority DESC"), "seq"])


def downgrade() -> None:
    op.drop_table("concurrency_waiting")
    op.drop_table("concurrency_slots")
    op.drop_column("tasks", "max_concurrency")
    op.drop_column("tasks", "concurrency_key")
