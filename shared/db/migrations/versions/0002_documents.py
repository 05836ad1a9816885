"""knowledge-base documents and chunks (pgvector), pipeline staging, embedding cache

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

- kb_documents / kb_chunks: what search reads. A document's chunks are replaced
  in one transaction; `task_id` orders writes (the newest submitted task wins).
- pipeline_*: intermediate data of one task run (by reference between stages),
  deleted when the task ends.
- embedding_cache: vectors by (model, sha256 of the text).
- Keyword search: a `simple` tsvector of CJK bigrams + words (shared/keywords.py),
  GIN-indexed; the bundled PostgreSQL has no pg_trgm (docs/decisions/0011).
- Vector search: `embedding` has no fixed dimension (models differ), so HNSW
  indexes are partial expression indexes per dimension; 384 (the default
  model) is created here, others by the index stage when first needed.
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

DEFAULT_DIMENSION = 384


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.execute("""
    CREATE TABLE kb_documents (
        kb_id           text        NOT NULL,
        document_id     text        NOT NULL,
        state           text        NOT NULL,
        task_id         uuid        NOT NULL,
        source          text,
        content_type    text,
        file_bytes      bigint,
        sha256          text,
        title           text,
        pages           integer,
        characters      bigint,
        chunk_count     integer     NOT NULL DEFAULT 0,
        embedding_model text,
        embedding_dim   integer,
        metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
        created_at      timestamptz NOT NULL DEFAULT now(),
        updated_at      timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (kb_id, document_id),
        CONSTRAINT ck_kb_documents_state CHECK (state IN ('ready', 'deleted'))
    )""")
    op.execute("CREATE INDEX ix_kb_documents_kb ON kb_documents (kb_id, updated_at DESC) WHERE state = 'ready'")

    op.execute("""
    CREATE TABLE kb_chunks (
        kb_id           text        NOT NULL,
        document_id     text        NOT NULL,
        chunk_index     integer     NOT NULL,
        chunk_id        uuid        NOT NULL,
        content         text        NOT NULL,
        char_start      bigint      NOT NULL,
        char_end        bigint      NOT NULL,
        pages           integer[]   NOT NULL DEFAULT '{}',
        heading_path    text[]      NOT NULL DEFAULT '{}',
        metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
        embedding       vector      NOT NULL,
        embedding_dim   smallint    NOT NULL,
        embedding_model text        NOT NULL,
        keywords        tsvector    NOT NULL,
        task_id         uuid        NOT NULL,
        updated_at      timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (kb_id, document_id, chunk_index),
        CONSTRAINT ux_kb_chunks_chunk_id UNIQUE (chunk_id)
    )""")
    op.execute("CREATE INDEX ix_kb_chunks_keywords ON kb_chunks USING gin (keywords)")
    op.execute(
        f"CREATE INDEX ix_kb_chunks_hnsw_{DEFAULT_DIMENSION} ON kb_chunks "
        f"USING hnsw ((embedding::vector({DEFAULT_DIMENSION})) vector_cosine_ops) "
        f"WHERE embedding_dim = {DEFAULT_DIMENSION}"
    )

    op.execute("""
    CREATE TABLE pipeline_documents (
        task_id       uuid        NOT NULL,
        run           integer     NOT NULL,
        kb_id         text        NOT NULL,
        document_id   text        NOT NULL,
        source        text        NOT NULL,
        content_type  text        NOT NULL,
        file_bytes    bigint      NOT NULL,
        sha256        text        NOT NULL,
        title         text,
        pages         integer,
        characters    bigint      NOT NULL DEFAULT 0,
        block_count   integer     NOT NULL DEFAULT 0,
        chunk_count   integer,
        metadata      jsonb       NOT NULL DEFAULT '{}'::jsonb,
        warnings      jsonb       NOT NULL DEFAULT '[]'::jsonb,
        created_at    timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (task_id, run)
    )""")
    op.execute("CREATE INDEX ix_pipeline_documents_created ON pipeline_documents (created_at)")
    op.execute("""
    CREATE TABLE pipeline_blocks (
        task_id       uuid     NOT NULL,
        run           integer  NOT NULL,
        seq           integer  NOT NULL,
        kind          text     NOT NULL,
        text          text     NOT NULL,
        page          integer,
        heading_path  text[]   NOT NULL DEFAULT '{}',
        section_break boolean  NOT NULL DEFAULT false,
        meta          jsonb,
        PRIMARY KEY (task_id, run, seq),
        FOREIGN KEY (task_id, run) REFERENCES pipeline_documents ON DELETE CASCADE
    )""")
    op.execute("""
    CREATE TABLE pipeline_chunks (
        task_id        uuid     NOT NULL,
        run            integer  NOT NULL,
        chunk_index    integer  NOT NULL,
        content        text     NOT NULL,
        char_start     bigint   NOT NULL,
        char_end       bigint   NOT NULL,
        pages          integer[] NOT NULL DEFAULT '{}',
        heading_path   text[]   NOT NULL DEFAULT '{}',
        meta           jsonb,
        search_text    text     NOT NULL,
        content_sha256 bytea    NOT NULL,
        embedding      vector,
        PRIMARY KEY (task_id, run, chunk_index),
        FOREIGN KEY (task_id, run) REFERENCES pipeline_documents ON DELETE CASCADE
    )""")

    op.execute("""
    CREATE TABLE embedding_cache (
        model       text        NOT NULL,
        text_sha256 bytea       NOT NULL,
        embedding   vector      NOT NULL,
        created_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (model, text_sha256)
    )""")
    op.execute("CREATE INDEX ix_embedding_cache_created ON embedding_cache (created_at)")

    # Observed speed of each stage per format, for progress weights and completion estimates.
    op.execute("""
    CREATE TABLE pipeline_stage_rates (
        stage            text             NOT NULL,
        content_type     text             NOT NULL,
        seconds_per_unit double precision NOT NULL,
        samples          integer          NOT NULL DEFAULT 1,
        updated_at       timestamptz      NOT NULL DEFAULT now(),
        PRIMARY KEY (stage, content_type)
    )""")


def downgrade() -> None:
    for table in ("pipeline_stage_rates", "embedding_cache", "pipeline_chunks", "pipeline_blocks",
                  "pipeline_documents", "kb_chunks", "kb_documents"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
