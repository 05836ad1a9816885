"""The query-embedding RPC between the api and the embed workers (`tm.rpc.embed`).

The api publishes an `EmbedRequest` with `reply_to` and `correlation_id`; an
embed worker answers with an `EmbedReply` from the same model that embedded
the documents. The api never loads a model (it stays small), and any number
of embed workers share the queue.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import PoisonMessage

MAX_QUERY_CHARS = 2000


class EmbedRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1
    texts: list[str] = Field(min_length=1, max_length=16)

    @classmethod
    def parse(cls, body: bytes) -> EmbedRequest:
        try:
            return cls.model_validate_json(body)
        except ValidationError as exc:
            raise PoisonMessage(f"not a valid embed request: {exc.errors(include_url=False)[0]['msg']}") from exc
        except (ValueError, TypeError, RecursionError) as exc:  # whatever else a hostile body raises
            raise PoisonMessage(f"not a valid embed request: {type(exc).__name__}") from exc


class EmbedReply(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    v: Literal[1] = 1
    ok: bool
    backend: str | None = None
    model: str | None = None  # as recorded on the chunks it embedded (kb_chunks.embedding_model)
    dimension: int | None = None
    vectors: list[list[float]] = Field(default_factory=list)
    error: str | None = None
