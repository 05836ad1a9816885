"""Embedding backends behind one small interface (`Embedder`): `local`
(sentence-transformers on CPU, offline) and `openai` (any OpenAI-compatible
/v1/embeddings endpoint). The embed worker loads one at start, once."""

from __future__ import annotations

from services.worker.embedding.base import EmbeddedBatch, Embedder
from shared.settings import EmbeddingBackend, EmbeddingSettings

__all__ = ["EmbeddedBatch", "Embedder", "create_embedder"]


def create_embedder(settings: EmbeddingSettings) -> Embedder:
    if settings.backend is EmbeddingBackend.OPENAI:
        from services.worker.embedding.openai import OpenAICompatibleEmbedder

        return OpenAICompatibleEmbedder(settings)
    from services.worker.embedding.packaged import PackagedEmbedder, is_packaged

    if is_packaged(settings.model):  # numpy models from a wheel, no torch
        return PackagedEmbedder(settings)
    from services.worker.embedding.local import LocalEmbedder

    return LocalEmbedder(settings)
