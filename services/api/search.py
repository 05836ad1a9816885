"""Hybrid search over a knowledge base's chunks: vector + keyword, fused.

- Vector: cosine distance on the HNSW index of the query's dimension (a
  partial expression index per dimension), restricted to chunks embedded by
  the same model as the query.
- Keyword: the query's terms (CJK bigrams, words; shared/keywords.py) OR-ed,
  matched on the GIN-indexed tsvector and ranked by cover density.
- Fusion: Reciprocal Rank Fusion (k=60), which needs no score calibration
  between the two lists; each result also shows both raw scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.types import Text

from shared.keywords import query_terms, tsquery

RRF_K = 60
Mode = Literal["hybrid", "vector", "keyword"]


@dataclass(frozen=True)
class QueryVector:
    model: str
    dimension: int
    literal: str  # pgvector text form


def _vector_cte(dimension: int, documents: bool) -> str:
    vector = f"vector({int(dimension)})"
    where = "AND document_id = ANY(:documents)" if documents else ""
    return f"""
    vec AS (
        SELECT document_id, chunk_index, distance, row_number() OVER (ORDER BY distance) AS rank FROM (
            SELECT document_id, chunk_index, (embedding::{vector}) <=> CAST(:vector AS {vector}) AS distance
            FROM kb_chunks
            WHERE kb_id = :kb_id AND embedding_dim = {int(dimension)} AND embedding_model = :model {where}
            ORDER BY (embedding::{vector}) <=> CAST(:vector AS {vector})
            LIMIT :candidates
        ) v
    )"""


def _keyword_cte(documents: bool) -> str:
    where = "AND document_id = ANY(:documents)" if documents else ""
    return f"""
    kw AS (
        SELECT document_id, chunk_index, score, row_number() OVER (ORDER BY score DESC) AS rank FROM (
            SELECT document_id, chunk_index, ts_rank_cd(keywords, q) AS score
            FROM kb_chunks, to_tsquery('simple', :tsquery) AS q
            WHERE kb_id = :kb_id AND keywords @@ q {where}
            ORDER BY score DESC
            LIMIT :candidates
        ) k
    )"""


_EMPTY_VEC = "vec AS (SELECT NULL::text AS document_id, NULL::int AS chunk_index, NULL::float8 AS distance, " \
             "NULL::bigint AS rank WHERE false)"
_EMPTY_KW = "kw AS (SELECT NULL::text AS document_id, NULL::int AS chunk_index, NULL::float8 AS score, " \
            "NULL::bigint AS rank WHERE false)"


async def search_chunks(
    engine: AsyncEngine, *, kb_id: str, query: str, vector: QueryVector | None, keywords: bool, top_k: int,
    document_ids: list[str] | None, ef_search: int,
) -> list[dict[str, Any]]:
    """The top chunks by fused rank: from the vector list when `vector` is given, the
    keyword list when `keywords` is true, or both."""
    terms = query_terms(query) if keywords else []
    documents = bool(document_ids)
    parts = [
        _vector_cte(vector.dimension, documents) if vector is not None else _EMPTY_VEC,
        _keyword_cte(documents) if terms else _EMPTY_KW,
    ]
    sql = f"""
    WITH {", ".join(parts)}
    SELECT c.document_id, c.chunk_index, CAST(c.chunk_id AS text) AS chunk_id, c.content, c.char_start, c.char_end,
           c.pages, c.heading_path, c.metadata, c.embedding_model,
           1 - f.distance AS vector_similarity, f.score AS keyword_score, f.vrank AS vector_rank, f.krank AS keyword_rank,
           COALESCE(1.0 / ({RRF_K} + f.vrank), 0) + COALESCE(1.0 / ({RRF_K} + f.krank), 0) AS score
    FROM (
        SELECT document_id, chunk_index, v.distance, v.rank AS vrank, k.score, k.rank AS krank
        FROM vec v FULL OUTER JOIN kw k USING (document_id, chunk_index)
    ) f
    JOIN kb_chunks c ON c.kb_id = :kb_id AND c.document_id = f.document_id AND c.chunk_index = f.chunk_index
    ORDER BY score DESC, c.document_id, c.chunk_index
    LIMIT :top_k
    """
    params: dict[str, Any] = {"kb_id": kb_id, "top_k": top_k, "candidates": max(top_k * 4, 20)}
    statement = text(sql)
    if vector is not None:
        params.update(vector=vector.literal, model=vector.model)
    if terms:
        params["tsquery"] = tsquery(terms)
    if documents:
        params["documents"] = document_ids
        statement = statement.bindparams(bindparam("documents", type_=ARRAY(Text)))
    async with engine.begin() as conn:
        # Candidates the HNSW graph search keeps; must cover the candidates we ask for.
        await conn.execute(text(f"SET LOCAL hnsw.ef_search = {max(int(ef_search), params['candidates'])}"))
        rows = (await conn.execute(statement, params)).mappings().all()
    return [dict(row) for row in rows]


async def knowledge_base_models(engine: AsyncEngine, kb_id: str) -> list[str]:
    """Embedding models the KB's ready documents were embedded with."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT DISTINCT embedding_model FROM kb_documents WHERE kb_id = :kb AND state = 'ready'"),
            {"kb": kb_id},
        )
        return [r[0] for r in rows if r[0]]
