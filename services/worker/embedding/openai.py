"""`openai`: any OpenAI-compatible `POST {EMBEDDING_BASE_URL}/embeddings`
(OpenAI, Azure-style gateways, vLLM, TEI, Ollama, LiteLLM serving BGE & co).

Retries with exponential backoff (honouring `Retry-After`) only where trying
again can help: 408, 429, 5xx and network errors. Any other 4xx fails the
task at once with the endpoint's message. A 200 whose body is an error, or
that does not hold one vector per input, is an error too (retried later by
the task, never stored).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
from loguru import logger

from services.worker.embedding.base import EmbeddedBatch
from shared import metrics
from shared.errors import Permanent, Retryable
from shared.settings import EmbeddingSettings

RETRY_STATUSES = frozenset({408, 429})


class _TryAgain(Exception):
    """A failure worth another HTTP attempt; carries the server's Retry-After when it sent one."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OpenAICompatibleEmbedder:
    backend = "openai"

    def __init__(self, settings: EmbeddingSettings) -> None:
        if not settings.base_url:
            raise Permanent("EMBEDDING_BACKEND=openai needs EMBEDDING_BASE_URL (e.g. https://api.openai.com/v1)")
        self.model = settings.model
        self.cache_key = settings.cache_key
        self._settings = settings
        self._url = f"{settings.base_url}/embeddings"
        self._session: aiohttp.ClientSession | None = None
        self._dimension: int | None = settings.dimensions
        self._slots = asyncio.Semaphore(settings.concurrency)

    @property
    def dimension(self) -> int | None:
        return self._dimension

    async def start(self) -> None:
        headers = {"Content-Type": "application/json"}
        if self._settings.api_key is not None:
            headers["Authorization"] = f"Bearer {self._settings.api_key.get_secret_value()}"
        self._session = aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=self._settings.timeout_seconds)
        )
        metrics.embedding_model_loads_total.labels(self.backend, self.model).inc()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def embed(self, texts: Sequence[str]) -> EmbeddedBatch:
        if self._session is None:
            raise RuntimeError("the embedder was not started")
        body: dict[str, Any] = {"model": self.model, "input": list(texts), "encoding_format": "float"}
        if self._settings.dimensions:
            body["dimensions"] = self._settings.dimensions

        async with self._slots:
            started = time.perf_counter()
            vectors = await self._post_with_retries(body, len(texts))
            metrics.embedding_batch_duration_seconds.labels(self.backend, self.model).observe(
                time.perf_counter() - started)
        return EmbeddedBatch(vectors=vectors)

    async def _post_with_retries(self, body: dict[str, Any], count: int) -> list[list[float]]:
        retries = self._settings.max_retries
        for attempt in range(retries + 1):
            try:
                return await self._post(body, count)
            except _TryAgain as exc:
                if attempt == retries:
                    raise Retryable(f"the embedding endpoint kept failing after {retries} retries: {exc}") from None
                # The server's Retry-After wins; otherwise 0.5 s doubling up to 30 s, with jitter.
                delay = exc.retry_after if exc.retry_after is not None else \
                    min(30.0, 0.5 * 2**attempt) * random.uniform(0.8, 1.2)
                logger.warning("embedding request failed ({}); retry {}/{} in {:.1f}s", exc, attempt + 1, retries,
                               delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _post(self, body: dict[str, Any], count: int) -> list[list[float]]:
        assert self._session is not None
        try:
            async with self._session.post(self._url, json=body) as response:
                text = await response.text()
                status = response.status
                retry_after = _retry_after(response.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _TryAgain(f"network error: {type(exc).__name__}: {exc}") from None
        if status in RETRY_STATUSES or status >= 500:
            raise _TryAgain(f"HTTP {status}: {_error_message(text)}", retry_after)
        if status != 200:
            raise Permanent(f"the embedding endpoint refused the request (HTTP {status}): {_error_message(text)}")
        return self._vectors(text, count)

    def _vectors(self, text: str, count: int) -> list[list[float]]:
        import orjson

        try:
            payload = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise Retryable(f"the embedding endpoint answered 200 with a body that is not JSON: {text[:200]!r}") \
                from None
        if not isinstance(payload, dict) or payload.get("error"):
            raise Retryable(f"the embedding endpoint answered 200 with an error: {_error_message(text)}")
        data = payload.get("data")
        if not isinstance(data, list) or len(data) != count:
            got = len(data) if isinstance(data, list) else "no"
            raise Retryable(f"the embedding endpoint returned {got} vectors for {count} inputs")
        try:
            ordered = sorted(data, key=lambda item: item["index"]) if all("index" in d for d in data) else data
            vectors = [[float(x) for x in item["embedding"]] for item in ordered]
        except (KeyError, TypeError, ValueError):
            raise Retryable("the embedding endpoint returned malformed vectors (expected data[].embedding floats)") \
                from None
        sizes = {len(v) for v in vectors}
        if len(sizes) != 1 or 0 in sizes:
            raise Retryable(f"the embedding endpoint returned vectors of different sizes: {sorted(sizes)}")
        size = sizes.pop()
        if self._dimension is not None and size != self._dimension:
            raise Permanent(f"the embedding endpoint returned {size}-dimensional vectors; expected "
                            f"{self._dimension} (EMBEDDING_DIMENSIONS or earlier answers)")
        self._dimension = size
        return vectors


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return min(60.0, max(0.0, float(value)))
    except ValueError:
        return None


def _error_message(text: str) -> str:
    import orjson

    try:
        payload = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text[:300] or "(empty body)"
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error)[:300]
    if error:
        return str(error)[:300]
    return text[:300]
