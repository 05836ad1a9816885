"""The embedder contract, run against both backends: the local model and the
OpenAI-compatible client (against a local server honouring the same API);
then the client's retry rules."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from services.worker.embedding import Embedder, create_embedder
from shared.errors import Permanent, Retryable
from shared.settings import EmbeddingSettings
from tests.support.environment import free_port
from tests.support.fake_embeddings import FakeEmbeddingServer, Scripted

pytestmark = pytest.mark.fast  # no broker, database or child process (make test-fast)


@pytest_asyncio.fixture(loop_scope="session")
async def fake_server() -> AsyncIterator[FakeEmbeddingServer]:
    server = FakeEmbeddingServer()
    await server.start()
    yield server
    await server.stop()


def _settings(**values: object) -> EmbeddingSettings:
    return EmbeddingSettings.model_validate(values)


def _openai(server: FakeEmbeddingServer, **extra: object) -> Embedder:
    return create_embedder(_settings(EMBEDDING_BACKEND="openai", EMBEDDING_MODEL=server.model,
                                     EMBEDDING_BASE_URL=server.base_url, EMBEDDING_API_KEY="sk-test",
                                     EMBEDDING_MAX_RETRIES=2, **extra))


class _LazyLocal:
    """The torch model, loaded by the first test that asks (the fast tier asks none)."""

    def __init__(self) -> None:
        self.embedder: Embedder | None = None

    async def get(self) -> Embedder:
        if self.embedder is None:
            # The torch path (sentence-transformers); the packaged default: tests/test_packaged_embedders.py.
            self.embedder = create_embedder(_settings(EMBEDDING_BACKEND="local", EMBEDDING_MODEL="all-MiniLM-L6-v2"))
            await self.embedder.start()
        return self.embedder


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def lazy_local() -> AsyncIterator[_LazyLocal]:
    lazy = _LazyLocal()
    yield lazy
    if lazy.embedder is not None:
        await lazy.embedder.close()


@pytest_asyncio.fixture(loop_scope="session")
async def local_embedder(lazy_local: _LazyLocal) -> Embedder:
    return await lazy_local.get()


@pytest_asyncio.fixture(loop_scope="session", params=[pytest.param("local", marks=pytest.mark.model), "openai"])
async def embedder(request: pytest.FixtureRequest, fake_server: FakeEmbeddingServer,
                   lazy_local: _LazyLocal) -> AsyncIterator[Embedder]:
    if request.param == "local":
        yield await lazy_local.get()  # loaded only when a local case runs
        return
    client = _openai(fake_server)
    await client.start()
    yield client
    await client.close()


async def test_one_vector_per_text_in_order_and_equal_texts_agree(embedder: Embedder) -> None:
    texts = ["Ducks are waterfowl.", "知识库的文档处理流程", "Ducks are waterfowl.", "x"]
    batch = await embedder.embed(texts)
    assert len(batch.vectors) == 4
    assert embedder.dimension is not None and {len(v) for v in batch.vectors} == {embedder.dimension}
    assert batch.vectors[0] == pytest.approx(batch.vectors[2], abs=1e-5)
    assert batch.vectors[0] != pytest.approx(batch.vectors[1], abs=1e-3)
    single = await embedder.embed(["知识库的文档处理流程"])
    assert single.vectors[0] == pytest.approx(batch.vectors[1], abs=1e-4), "batching does not change a vector"
    assert all(math.isfinite(x) for v in batch.vectors for x in v)
    assert embedder.model and embedder.cache_key.startswith(embedder.backend + ":")


@pytest.mark.model
async def test_the_local_model_is_all_minilm_and_reports_truncation(local_embedder: Embedder) -> None:
    assert local_embedder.dimension == 384 and local_embedder.model == "all-MiniLM-L6-v2"
    close = await local_embedder.embed(["How do ducks feed?", "Dabbling ducks feed by upending.",
                                        "The bond prospectus lists credit ratings."])
    similarity = sum(a * b for a, b in zip(close.vectors[0], close.vectors[1], strict=True))
    unrelated = sum(a * b for a, b in zip(close.vectors[0], close.vectors[2], strict=True))
    assert similarity > unrelated, "a real model: related texts are closer"
    long = await local_embedder.embed(["word " * 600, "short"])
    assert long.truncated == 1


async def test_retries_429_and_5xx_honouring_retry_after(fake_server: FakeEmbeddingServer) -> None:
    client = _openai(fake_server)
    await client.start()
    try:
        fake_server.requests.clear()
        fake_server.script[:] = [Scripted(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"}),
                                 Scripted(503, {"error": {"message": "overloaded"}}, {"Retry-After": "0"})]
        batch = await client.embed(["a", "b"])
        assert len(batch.vectors) == 2 and len(fake_server.requests) == 3
        assert fake_server.authorizations[-1] == "Bearer sk-test"
        fake_server.script[:] = [Scripted(500, headers={"Retry-After": "0"})] * 3
        with pytest.raises(Retryable, match="kept failing after 2 retries"):
            await client.embed(["a"])
    finally:
        await client.close()


async def test_other_client_errors_fail_at_once_with_the_servers_message(fake_server: FakeEmbeddingServer) -> None:
    client = _openai(fake_server)
    await client.start()
    try:
        fake_server.requests.clear()
        fake_server.script[:] = [Scripted(400, {"error": {"message": "model not found: fake"}})]
        with pytest.raises(Permanent, match="HTTP 400.*model not found"):
            await client.embed(["a"])
        assert len(fake_server.requests) == 1, "a 400 is not retried"
    finally:
        await client.close()


async def test_an_error_body_or_missing_vectors_in_a_200_is_an_error(fake_server: FakeEmbeddingServer) -> None:
    client = _openai(fake_server)
    await client.start()
    try:
        fake_server.script[:] = [Scripted(200, {"error": {"message": "quota exceeded"}})]
        with pytest.raises(Retryable, match="200 with an error: quota exceeded"):
            await client.embed(["a"])
        fake_server.script[:] = [Scripted(200, vectors=1)]
        with pytest.raises(Retryable, match="returned 1 vectors for 3 inputs"):
            await client.embed(["a", "b", "c"])
    finally:
        await client.close()


async def test_network_errors_are_retried_then_reported() -> None:
    client = create_embedder(_settings(EMBEDDING_BACKEND="openai", EMBEDDING_BASE_URL=f"http://127.0.0.1:{free_port()}/v1",
                                       EMBEDDING_MAX_RETRIES=1))
    await client.start()
    try:
        with pytest.raises(Retryable, match="network error"):
            await client.embed(["a"])
    finally:
        await client.close()


async def test_requested_dimensions_are_sent_and_checked(fake_server: FakeEmbeddingServer) -> None:
    client = _openai(fake_server, EMBEDDING_DIMENSIONS=8)
    await client.start()
    try:
        batch = await client.embed(["a"])
        assert fake_server.requests[-1]["dimensions"] == 8 and len(batch.vectors[0]) == 8
    finally:
        await client.close()


def test_the_openai_backend_needs_a_base_url() -> None:
    with pytest.raises(Permanent, match="EMBEDDING_BASE_URL"):
        create_embedder(_settings(EMBEDDING_BACKEND="openai"))
