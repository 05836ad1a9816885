"""The embedder contract every backend honours (and the contract tests check)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class EmbeddedBatch:
    vectors: list[list[float]]  # one per input text, in input order, all of `dimension` floats
    truncated: int = 0  # inputs longer than the model reads (embedded from their beginning only)


class Embedder(Protocol):
    backend: str
    model: str  # recorded on every chunk; a query must be embedded by the same model
    cache_key: str

    @property
    def dimension(self) -> int | None:
        """Known after `start()` (local) or after the first batch (openai)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def embed(self, texts: Sequence[str]) -> EmbeddedBatch:
        """Raises shared.errors.Retryable (try later) or Permanent (the input or config is wrong)."""


def to_pgvector(vector: Sequence[float]) -> str:
    """pgvector's text form."""
    return "[" + ",".join(f"{x:.7g}" for x in vector) + "]"
