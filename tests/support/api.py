"""Driving the api over HTTP the way a client would."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

TERMINAL = {"completed", "failed", "cancelled"}


class ApiClient:
    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base_url = base_url
        self.session = session

    async def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self.session.request(method, self.base_url + path, **kwargs) as response:
            body = await response.json(content_type=None) if response.content_length != 0 else None
            return response.status, body

    async def submit(self, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        status, created = await self.call("POST", "/api/v1/tasks", json=body, **kwargs)
        assert status in (200, 201), (status, created)
        return created  # type: ignore[no-any-return]

    async def get(self, task_id: str) -> dict[str, Any]:
        status, task = await self.call("GET", f"/api/v1/tasks/{task_id}")
        assert status == 200, (status, task)
        return task  # type: ignore[no-any-return]

    async def wait_for(self, task_id: str, statuses: set[str] = TERMINAL, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            task = await self.get(task_id)
            if task["status"] in statuses:
                return task
            if time.monotonic() > deadline:
                raise AssertionError(f"task {task_id} still {task['status']} after {timeout}s: {task}")
            await asyncio.sleep(0.05)

    async def wait_for_callback(self, task_id: str, state: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            task = await self.get(task_id)
            if task.get("callback", {}).get("state") == state:
                return task
            if time.monotonic() > deadline:
                raise AssertionError(f"callback of {task_id} not {state} after {timeout}s: {task.get('callback')}")
            await asyncio.sleep(0.05)

    async def run(self, body: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
        created = await self.submit(body)
        return await self.wait_for(created["task_id"], timeout=timeout)
