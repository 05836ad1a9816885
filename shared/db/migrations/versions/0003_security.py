"""security: API keys, task owners (idempotency keys per principal), uploads

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        # SHA-256 of the secret part: keys are 256-bit random, so a slow hash adds nothing.
        sa.Column("secret_sha256", sa.Text, nullable=False),
        sa.Column("scopes", postgresql.ARRAY(sa.Text), nullable=False),
        # NULL: every knowledge base; otherwise only these.
        sa.Column("kb_ids", postgresql.ARRAY(sa.Text)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.Column("last_used_at", sa.DateTime(timezone=True)),
    )

    # Who created a task: "key:<id>", "anonymous" (auth off) or "amqp" (tm.submit).
    # Idempotency keys are unique per owner, so one client cannot probe or
    # collide with another's keys.
    op.add_column("tasks", sa.Column("created_by", sa.Text, nullable=False, server_default="anonymous"))
    op.execute(
        "UPDATE tasks SET created_by = 'amqp', idempotency_key = substr(idempotency_key, 6) "
        "WHERE idempotency_key LIKE 'amqp:%'"
    )
    op.drop_index("ux_tasks_idempotency_key", table_name="tasks")
    op.create_index(
        "ux_tasks_owner_idempotency_key", "tasks", ["created_by", "idempotency_key"], unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    # Upload retention asks "which tasks use this file_ref, and have they ended?"
    op.create_index(
        "ix_tasks_file_ref", "tasks", [sa.text("(payload->>'file_ref')")],
        postgresql_where=sa.text("payload ? 'file_ref'"),
    )

    op.create_table(
        "uploads",
        sa.Column("file_ref", sa.Text, primary_key=True),
        sa.Column("kb_id", sa.Text, nullable=False),
        sa.Column("created_by", sa.Text, nullable=False),
        sa.Column("filename", sa.Text),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("content_type", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
    )
    op.create_index("ix_uploads_created_at", "uploads", ["created_at"])


def downgrade() -> None:
    op.drop_table("uploads")
    op.drop_index("ix_tasks_file_ref", table_name="tasks")
    op.drop_index("ux_tasks_owner_idempotency_key", table_name="tasks")
    op.execute(
        "UPDATE tasks SET idempotency_key = 'amqp:' || idempotency_key "
        "WHERE created_by = 'amqp' AND idempotency_key IS NOT NULL"
    )
    # Fails if two owners used the same key meanwhile: resolve those rows first.
    op.create_index(
        "ux_tasks_idempotency_key", "tasks", ["idempotency_key"], unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.drop_column("tasks", "created_by")
    op.drop_table("api_keys")
