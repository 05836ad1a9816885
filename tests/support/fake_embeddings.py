"""A local stand-in for an OpenAI-compatible `/v1/embeddings` endpoint.

It honours the same contract as the real thing (request and response shape,
`index` order, error bodies, Retry-After) and can be told to fail: each entry
of `script` answers one request before normal service resumes. Vectors are
deterministic functions of the text, so equal texts get equal vectors.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.loopback_server import LoopbackServer


def fake_vector(text: str, dimension: int) -> list[float]:
    raw = b""
    counter = 0
    while len(raw) < dimension:
        raw += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    values = [(b - 127.5) / 127.5 for b in raw[:dimension]]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


@dataclass
class Scripted:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    vectors: int | None = None  # answer 200 with this many vectors instead of one per input


@dataclass
class FakeEmbeddingServer(LoopbackServer):
    dimension: int = 32
    model: str = "fake-embed-1"
    script: list[Scripted] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/embeddings", self._embeddings)

    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        self.authorizations.append(request.headers.get("Authorization"))
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        count = len(inputs)
        if self.script:
            step = self.script.pop(0)
            if step.status != 200 or step.body is not None:
                return web.json_response(step.body or {"error": {"message": f"scripted {step.status}"}},
                                         status=step.status, headers=step.headers)
            count = step.vectors if step.vectors is not None else count
        dimension = int(body.get("dimensions") or self.dimension)
        data = [{"object": "embedding", "index": i, "embedding": fake_vector(text, dimension)}
                for i, text in enumerate(inputs[:count])]
        data.reverse()  # clients must order by `index`, not by position
        return web.json_response({"object": "list", "model": body["model"], "data": data,
                                  "usage": {"prompt_tokens": 0, "total_tokens": 0}})
