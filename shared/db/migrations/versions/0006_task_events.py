"""task_events: the recent task event log behind GET /api/v1/events

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Written only by the dispatcher, idempotently (event_id is unique), pruned
    # after EVENT_LOG_RETENTION. Appends hold a table lock until they commit, so
    # seq order is commit order: a stream's position is its last seq.
    op.execute("""
        CREATE TABLE task_events (
            seq bigserial PRIMARY KEY,
            event_id uuid NOT NULL,
            task_id uuid NOT NULL,
            run integer NOT NULL,
            kind text NOT NULL,
            task_type text NOT NULL,
            kb_id text,
            at timestamptz NOT NULL,
            recorded_at timestamptz NOT NULL DEFAULT now(),
            data jsonb NOT NULL
        )
    """)
    op.execute("CREATE UNIQUE INDEX ux_task_events_event_id ON task_events (event_id)")
    op.execute("CREATE INDEX ix_task_events_task ON task_events (task_id, seq)")
    op.execute("CREATE INDEX ix_task_events_recorded_at ON task_events (recorded_at)")


def downgrade() -> None:
    op.execute("DROP TABLE task_events")
