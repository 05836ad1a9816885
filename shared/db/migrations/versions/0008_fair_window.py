"""fair window: concurrency_waiting.kb_id and fair_rank, granted in (priority, fair_rank, seq) order

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Decision 0161: a task waiting for its stage's fair window carries its kb and its round;
    # other waiting tasks have round 0, so their order (priority, then arrival) is unchanged.
    op.add_column("concurrency_waiting", sa.Column("kb_id", sa.Text))
    op.add_column("concurrency_waiting", sa.Column("fair_rank", sa.BigInteger, nullable=False,
                                                   server_default=sa.text("0")))
    op.drop_index("ix_concurrency_waiting_order", table_name="concurrency_waiting")
    op.create_index("ix_concurrency_waiting_order", "concurrency_waiting",
                    ["key", sa.text("priority DESC"), "fair_rank", "seq"])
    op.create_index("ix_concurrency_waiting_kb", "concurrency_waiting", ["key", "kb_id", "fair_rank"])


def downgrade() -> None:
    op.drop_index("ix_concurrency_waiting_kb", table_name="concurrency_waiting")
    op.drop_index("ix_concurrency_waiting_order", table_name="concurrency_waiting")
    op.create_index("ix_concurrency_waiting_order", "concurrency_waiting", ["key", sa.text("priority DESC"), "seq"])
    op.drop_column("concurrency_waiting", "fair_rank")
    op.drop_column("concurrency_waiting", "kb_id")
